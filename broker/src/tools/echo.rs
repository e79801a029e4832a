//! `echo`: answers with its arguments. On by default: it lets a client check the whole
//! tool path (script -> executor -> broker -> back) without giving scripts any reach.

use super::{Tool, ToolContext, ToolFuture};

pub struct Echo;

impl Tool for Echo {
    fn call<'a>(&'a self, _cx: &'a ToolContext<'a>, args: serde_json::Value) -> ToolFuture<'a> {
        Box::pin(async move { Ok(args) })
    }
}
