//! `secrets:get {key}`: answers with a handle for the secret, never its value (see
//! [`crate::secrets`] for why and where the value is used instead).

use serde::Deserialize;

use super::{Tool, ToolContext, ToolError, ToolFuture, ToolSpec, parse_args};

pub struct SecretsGet;

pub fn spec() -> ToolSpec {
    ToolSpec::new(
        "Returns an opaque handle for a secret the broker holds, never its value. Pass the \
         handle to http:fetch where the secret may go (a header, a query parameter); the \
         broker puts the value there.",
        serde_json::json!({
            "type": "object",
            "properties": {"key": {"type": "string", "description": "The secret's name."}},
            "required": ["key"],
            "additionalProperties": false,
        }),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Args {
    key: String,
}

impl Tool for SecretsGet {
    fn call<'a>(&'a self, cx: &'a ToolContext<'a>, args: serde_json::Value) -> ToolFuture<'a> {
        Box::pin(async move {
            let args: Args = parse_args(args, "{ key: string }")?;
            match cx.secrets.handle_for(&args.key) {
                Some(handle) => Ok(serde_json::Value::String(handle)),
                // Same answer whether the name is unknown or merely not listed, so a
                // script cannot probe which secrets exist.
                None => Err(ToolError::denied(format!(
                    "no readable secret named `{}`",
                    args.key
                ))),
            }
        })
    }
}
