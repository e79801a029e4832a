//! What scripts and clients are told about a tool, and the check of a call's arguments
//! against it.
//!
//! Every tool has a description and a JSON Schema for its arguments, whatever its
//! source: an agent is told its tools through `ListTools` (or `listTools()` in a script),
//! and the broker refuses a call that does not match before any tool code runs, so a
//! tool service never sees arguments its own schema rules out.

use std::fmt::Write as _;

use serde_json::Value;

use super::ToolError;

/// The longest message a schema rejection gives the script: a message quotes the
/// offending value, which may be megabytes.
const MAX_MESSAGE_CHARS: usize = 400;

/// A tool as `ListTools` shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolSpec {
    /// What the tool does, for a person or a model choosing it.
    pub description: String,
    /// JSON Schema of the arguments; `{}` (or `true`) accepts anything.
    pub input_schema: Value,
}

impl ToolSpec {
    pub fn new(description: impl Into<String>, input_schema: Value) -> ToolSpec {
        ToolSpec {
            description: description.into(),
            input_schema,
        }
    }

    /// A tool that takes any arguments.
    pub fn any(description: impl Into<String>) -> ToolSpec {
        ToolSpec::new(description, Value::Object(Default::default()))
    }
}

/// A schema compiled once, at registration.
pub(crate) struct ArgsCheck {
    validator: jsonschema::Validator,
}

impl ArgsCheck {
    /// Compiles `schema`. Fails for a schema that is not valid JSON Schema, or that
    /// refers to another document (`$ref` to a URL or file): nothing is fetched.
    pub(crate) fn compile(schema: &Value) -> Result<ArgsCheck, String> {
        let validator = jsonschema::validator_for(schema).map_err(|e| e.to_string())?;
        Ok(ArgsCheck { validator })
    }

    /// The first way `args` fails the schema, as the script's Error says it: the path
    /// (a JSON Pointer into the arguments) and what is wrong there.
    pub(crate) fn check(&self, args: &Value) -> Result<(), ToolError> {
        let Some(error) = self.validator.iter_errors(args).next() else {
            return Ok(());
        };
        let mut message = String::from("arguments do not match the tool's schema");
        let path = error.instance_path().to_string();
        if !path.is_empty() {
            let _ = write!(message, " at {path}");
        }
        let _ = write!(message, ": {error}");
        Err(ToolError::bad_args(super::shorten(
            &message,
            MAX_MESSAGE_CHARS,
        )))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_rejection_names_the_failing_path() {
        let check = ArgsCheck::compile(&json!({
            "type": "object",
            "properties": {"q": {"type": "object", "properties": {"limit": {"type": "integer"}}}},
        }))
        .unwrap();
        assert!(check.check(&json!({"q": {"limit": 3}})).is_ok());
        let error = check.check(&json!({"q": {"limit": "ten"}})).unwrap_err();
        assert_eq!(
            error.message,
            "arguments do not match the tool's schema at /q/limit: \"ten\" is not of type \"integer\""
        );
        let error = check.check(&json!(null)).unwrap_err();
        assert_eq!(
            error.message,
            "arguments do not match the tool's schema: null is not of type \"object\""
        );
    }

    #[test]
    fn a_huge_value_gives_a_short_message() {
        let check = ArgsCheck::compile(&json!({"type": "number"})).unwrap();
        let error = check.check(&json!("x".repeat(1 << 20))).unwrap_err();
        assert!(error.message.chars().count() <= MAX_MESSAGE_CHARS + 1);
    }

    #[test]
    fn schemas_that_refer_elsewhere_are_refused() {
        for schema in [
            json!({"$ref": "https://example.com/schema.json"}),
            json!({"$ref": "file:///etc/passwd"}),
        ] {
            assert!(ArgsCheck::compile(&schema).is_err(), "{schema}");
        }
        assert!(ArgsCheck::compile(&json!({"type": "nonsense"})).is_err());
    }
}
