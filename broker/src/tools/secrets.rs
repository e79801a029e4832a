//! `secrets:get {key}`: answers with a handle for the secret, never its value (see
//! [`crate::secrets`] for why and where the value is used instead).

use serde::Deserialize;

use super::{Tool, ToolContext, ToolError, ToolFuture, parse_args};

pub struct SecretsGet;

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
