//! `echo`: answers with its arguments. On by default: it lets a client check the whole
//! tool path (script -> executor -> broker -> back) without giving scripts any reach.

use super::{Tool, ToolContext, ToolFuture, ToolSpec};

pub struct Echo;

pub fn spec() -> ToolSpec {
    ToolSpec::any("Returns its arguments unchanged: a check of the whole tool path.")
}

impl Tool for Echo {
    fn call<'a>(&'a self, _cx: &'a ToolContext<'a>, args: serde_json::Value) -> ToolFuture<'a> {
        Box::pin(async move { Ok(args) })
    }
}
