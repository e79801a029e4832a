//! `enclave tools`: what a session's scripts may call, to hand to an agent.

use std::io::Write;
use std::process::ExitCode;

use enclave_client::ToolInfo;

use super::args::ToolsArgs;
use super::run::builder;
use super::{CliError, EXIT_OK};

pub async fn tools(args: ToolsArgs) -> Result<ExitCode, CliError> {
    let client = builder(&args.connection).connect().await?;
    let tools = client.list_tools().await?;
    if let Err(e) = client.close().await {
        tracing::debug!("closing the session: {e}");
    }
    let mut out = std::io::stdout().lock();
    write(&mut out, &tools, args.json).map_err(|error| CliError::Io {
        what: "cannot write the tool list".into(),
        error,
    })?;
    Ok(ExitCode::from(EXIT_OK))
}

fn write(out: &mut impl Write, tools: &[ToolInfo], json: bool) -> std::io::Result<()> {
    for tool in tools {
        if json {
            // The schema is the broker's JSON text; embedded as a value, not a string.
            let schema: serde_json::Value = serde_json::from_str(&tool.input_schema_json)
                .unwrap_or(serde_json::Value::String(tool.input_schema_json.clone()));
            let line = serde_json::json!({
                "name": tool.name,
                "description": tool.description,
                "inputSchema": schema,
            });
            writeln!(out, "{line}")?;
        } else {
            writeln!(out, "{}\t{}", tool.name, tool.description)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tool() -> ToolInfo {
        ToolInfo {
            name: "secrets:get".into(),
            description: "Returns a handle.".into(),
            input_schema_json: r#"{"type":"object"}"#.into(),
        }
    }

    #[test]
    fn text_is_one_line_per_tool() {
        let mut out = Vec::new();
        write(&mut out, &[tool(), tool()], false).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "secrets:get\tReturns a handle.\nsecrets:get\tReturns a handle.\n"
        );
    }

    #[test]
    fn json_embeds_the_schema_as_a_value() {
        let mut out = Vec::new();
        write(&mut out, &[tool()], true).unwrap();
        let line: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(line["inputSchema"]["type"], "object");
        assert_eq!(line["name"], "secrets:get");
    }
}
