//! The job API's wire codec: prost's, plus what prost does not do. prost skips fields the
//! schema does not define, so a client could believe a field it sent was honoured (a typo,
//! or a newer client against an older gateway): each message is also read against the
//! compiled descriptor set (prost-reflect) and any unknown field is refused, `INVALID_ARGUMENT`
//! naming where it is. A message that does not decode at all (e.g. a string that is not UTF-8)
//! is `INVALID_ARGUMENT` too, with prost's message naming the field, never `INTERNAL`.

use std::marker::PhantomData;
use std::sync::LazyLock;

use prost::bytes::Buf;
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, Value};
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic::Status;
use tonic_prost::ProstEncoder;

/// The job API's descriptors, parsed once.
static POOL: LazyLock<Option<DescriptorPool>> =
    LazyLock::new(|| DescriptorPool::decode(crate::pb::DESCRIPTOR_SET).ok());

/// The descriptor of the job API's message `full_name` (`qiria.jobs.v1.Job`), shared with the
/// JSON form so that both read one schema.
pub(crate) fn descriptor(full_name: &str) -> Option<MessageDescriptor> {
    POOL.as_ref().and_then(|pool| pool.get_message_by_name(full_name))
}

/// A tonic codec: prost encoding, strict decoding.
#[derive(Debug, Clone)]
pub struct StrictCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for StrictCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for StrictCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + prost::Name + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = StrictDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        StrictDecoder(PhantomData)
    }
}

/// Decodes `U`, refusing unknown fields.
#[derive(Debug, Clone)]
pub struct StrictDecoder<U>(PhantomData<U>);

impl<U: Message + prost::Name + Default> Decoder for StrictDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        let bytes = buf.copy_to_bytes(buf.remaining());
        let invalid = |e: prost::DecodeError| Status::invalid_argument(format!("not a valid {}: {e}", U::NAME));
        // Fail closed: a descriptor set that does not know the message refuses it.
        let descriptor = descriptor(&U::full_name())
            .ok_or_else(|| Status::internal(format!("no descriptor for {}", U::full_name())))?;
        let dynamic = DynamicMessage::decode(descriptor, bytes.clone()).map_err(invalid)?;
        if let Some(at) = unknown_field(&dynamic, "") {
            return Err(Status::invalid_argument(format!("{at}: unknown field")));
        }
        U::decode(bytes).map(Some).map_err(invalid)
    }
}

/// The JSON pointer of the first field `message` (or a message inside it) does not define,
/// by field number: `/7`, `/inputs/.../3`.
fn unknown_field(message: &DynamicMessage, at: &str) -> Option<String> {
    if let Some(field) = message.unknown_fields().next() {
        return Some(format!("{at}/{}", field.number()));
    }
    for (field, value) in message.fields() {
        let at = format!("{at}/{}", field.name());
        let found = match value {
            Value::Message(inner) => unknown_field(inner, &at),
            Value::List(items) => items.iter().find_map(|item| item.as_message().and_then(|m| unknown_field(m, &at))),
            Value::Map(entries) => entries.values().find_map(|v| v.as_message().and_then(|m| unknown_field(m, &at))),
            _ => None,
        };
        if found.is_some() {
            return found;
        }
    }
    None
}
