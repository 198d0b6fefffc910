//! Generates the job API's Rust code and descriptor set from `proto/` with protox (a protobuf
//! compiler in Rust), so that building needs no `protoc` on the machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "../proto/qiria/jobs/v1/jobs.proto";
    println!("cargo:rerun-if-changed={proto}");
    // The scripting worker's API: a job carries its result, and the gateway is its client.
    println!("cargo:rerun-if-changed=../proto/qiria/sandbox/v1/sandbox.proto");
    let descriptors = protox::compile([proto], ["../proto"])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("jobs_descriptor.bin"), prost::Message::encode_to_vec(&descriptors))?;
    // Every message knows its full name (`prost::Name`), which the strict codec looks up.
    let mut prost = tonic_prost_build::Config::new();
    prost.enable_type_names();
    tonic_prost_build::configure()
        .codec_path("crate::strict::StrictCodec")
        .compile_fds_with_config(descriptors, prost)?;
    Ok(())
}
