//! Qiria's worker-gateway: the job API where approved work leaves the mesh.
//!
//! A call flows one way: `service` receives it → `caller` verifies the bearer token itself
//! (zero trust: Envoy and authz are the first gate, not the only one) → `access` decides what
//! the caller may see and do, `flows` whether the policy's allowlist has the flow →
//! `validate` checks every field before anything is stored → `jobs` records it (owner checks
//! inside the queries) → `watch` tells open streams. Then `driver` takes flow jobs from the
//! store to Kestra through `kestra` (mTLS, exactly one execution per job) and back, and
//! `scripts` takes script jobs to the scripting worker through `sandbox` (mTLS) and back. `strict`
//! is the wire codec that refuses fields the schema does not define; `rest` serves the same
//! API as REST/JSON on the same port, calling the same `service`, with `json` its codec (the
//! same descriptors). `errors` maps every failure to a gRPC status, and that to an HTTP
//! status, in one place; `server` wires; `config` says how; `client` is the
//! command-line client (`worker-gateway jobs`).

pub mod access;
pub mod caller;
pub mod client;
pub mod config;
pub mod driver;
pub mod errors;
pub mod flows;
pub mod jobs;
pub mod json;
pub mod kestra;
pub mod rest;
pub mod retention;
pub mod sandbox;
pub mod scripts;
pub mod server;
pub mod service;
pub mod strict;
pub mod validate;
pub mod watch;

/// The generated code, in the packages' own nesting (a job refers to the sandbox API's
/// `RunResult` by its package path).
pub mod proto {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    /// `qiria.*`.
    pub mod qiria {
        /// `qiria.jobs.*`.
        pub mod jobs {
            /// The job API (`proto/qiria/jobs/v1/jobs.proto`).
            pub mod v1 {
                tonic::include_proto!("qiria.jobs.v1");

                /// The compiled descriptor set of the job API (with the sandbox API it imports).
                pub const DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/jobs_descriptor.bin"));
            }
        }
        /// `qiria.sandbox.*`.
        pub mod sandbox {
            /// The scripting worker's API (`proto/qiria/sandbox/v1/sandbox.proto`): the gateway is
            /// its client.
            pub mod v1 {
                tonic::include_proto!("qiria.sandbox.v1");
            }
        }
    }
}

pub use proto::qiria::jobs::v1 as pb;
pub use proto::qiria::sandbox::v1 as sandbox_pb;
