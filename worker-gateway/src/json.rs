//! The job API's JSON form: protobuf's JSON mapping, read and written with prost-reflect
//! against the same compiled descriptor set as the binary form (`strict`), so the two forms
//! are one schema and a field added to the proto is in both.
//!
//! Reading refuses what the schema does not define, as the binary form does (a typo must not
//! be silently dropped), naming where as a JSON pointer (`/extra`, `/inputs/when`); both the
//! proto names (`flow_id`) and the lowerCamelCase JSON names (`flowId`) are accepted, as the
//! mapping says. The result becomes the typed message the service takes.
//!
//! Writing uses the proto field names (snake_case: as the proto, the error pointers and the
//! request bodies spell them), enum value names (`JOB_STATE_QUEUED`: readable, and stable
//! when values are added), every field even at its default (one shape for clients to read),
//! and 64-bit integers as JSON numbers, not the mapping's strings: the only ones are seconds
//! since the epoch, far inside the 2^53 a JSON number holds exactly.

use prost::Message;
use prost_reflect::{DeserializeOptions, DynamicMessage, SerializeOptions};
use serde_path_to_error::Segment;
use tonic::Status;

use crate::errors::RestError;
use crate::validate::pointer;

/// How responses are written (see the module's documentation).
const WRITE: SerializeOptions =
    SerializeOptions::new().use_proto_field_name(true).skip_default_fields(false).stringify_64_bit_integers(false);

/// `T` from a JSON value: the value read against `T`'s descriptor, refusing unknown fields.
pub fn decode<T: Message + prost::Name + Default>(value: serde_json::Value) -> Result<T, RestError> {
    let descriptor = crate::strict::descriptor(&T::full_name()).ok_or_else(|| missing(&T::full_name()))?;
    let mut track = serde_path_to_error::Track::new();
    let read = DynamicMessage::deserialize_with_options(
        descriptor,
        serde_path_to_error::Deserializer::new(value, &mut track),
        // Refusing unknown fields is prost-reflect's default; said here because it matters.
        &DeserializeOptions::new().deny_unknown_fields(true),
    );
    let dynamic = match read {
        Ok(dynamic) => dynamic,
        Err(error) => return Err(refusal(&track.path(), &error.to_string())),
    };
    dynamic.transcode_to::<T>().map_err(|e| RestError::invalid(None, format!("not a valid {}: {e}", T::NAME)))
}

/// `message` as a JSON value (see the module's documentation for the shape).
pub fn encode<T: Message + prost::Name>(message: &T) -> Result<serde_json::Value, Status> {
    let descriptor = crate::strict::descriptor(&T::full_name()).ok_or_else(|| missing(&T::full_name()))?;
    let mut dynamic = DynamicMessage::new(descriptor);
    let internal = |e: &dyn std::fmt::Display| Status::internal(format!("cannot write a {} as JSON: {e}", T::NAME));
    dynamic.transcode_from(message).map_err(|e| internal(&e))?;
    dynamic.serialize_with_options(serde_json::value::Serializer, &WRITE).map_err(|e| internal(&e))
}

fn missing(name: &str) -> Status {
    // Fail closed, as the binary form does: a descriptor set without the message refuses it.
    Status::internal(format!("no descriptor for {name}"))
}

/// The refusal of a value that did not read: where (the decoder's path, plus the key of an
/// unknown field, which the decoder reports only in its message) and why.
fn refusal(path: &serde_path_to_error::Path, message: &str) -> RestError {
    let mut at = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => at.push_str(&format!("/{index}")),
            Segment::Map { key } => at.push_str(&format!("/{}", pointer(key))),
            Segment::Enum { variant } => at.push_str(&format!("/{}", pointer(variant))),
            Segment::Unknown => at.push_str("/?"),
        }
    }
    // prost-reflect's wording for a key the message does not define; the test below pins it.
    let unknown = message.strip_prefix("unrecognized field name '").and_then(|rest| rest.strip_suffix('\''));
    match unknown {
        Some(key) => RestError::invalid(Some(format!("{at}/{}", pointer(key))), "unknown field"),
        None if at.is_empty() => RestError::invalid(None, message),
        None => RestError::invalid(Some(at), message),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::pb::{Job, JobState, ListJobsRequest, TriggerFlowRequest};

    fn field(error: RestError) -> Option<String> {
        match error {
            RestError::Status { field, .. } => field,
            other => panic!("not a status: {other:?}"),
        }
    }

    #[test]
    fn reads_proto_and_json_names_and_refuses_unknown_fields_naming_them() {
        let request: TriggerFlowRequest =
            decode(json!({"namespace": "a", "flowId": "b", "inputs": {"x": "1"}, "idempotency_key": "k"})).unwrap();
        assert_eq!((request.flow_id.as_str(), request.idempotency_key.as_str()), ("b", "k"));
        assert_eq!(request.inputs["x"], "1");
        assert_eq!(field(decode::<TriggerFlowRequest>(json!({"extra": 1})).unwrap_err()).as_deref(), Some("/extra"));
        assert_eq!(field(decode::<TriggerFlowRequest>(json!({"a/b~": 1})).unwrap_err()).as_deref(), Some("/a~1b~0"));
        let wrong_type = decode::<TriggerFlowRequest>(json!({"inputs": {"when": 5}})).unwrap_err();
        assert_eq!(field(wrong_type).as_deref(), Some("/inputs/when"));
        assert_eq!(field(decode::<TriggerFlowRequest>(json!(["not", "an object"])).unwrap_err()), None);
        // Numbers as strings, as the mapping allows (a query string has no other kind).
        let page: ListJobsRequest = decode(json!({"page_size": "7"})).unwrap();
        assert_eq!(page.page_size, 7);
    }

    #[test]
    fn writes_snake_case_enum_names_every_field_and_numbers() {
        let job =
            Job { id: "j".into(), state: JobState::Queued as i32, created_at: 1_700_000_000, ..Default::default() };
        let written = encode(&job).unwrap();
        assert_eq!(written["state"], "JOB_STATE_QUEUED");
        assert_eq!(written["created_at"], 1_700_000_000);
        assert_eq!(written["execution_id"], "", "a default is written too");
        let back: Job = decode(written).unwrap();
        assert_eq!(back, job, "what is written reads back");
    }
}
