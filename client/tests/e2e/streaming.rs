use enclave_client::{ConsoleLevel, ErrorCode, Event};
use futures::StreamExt;
use serde_json::json;

use crate::support::Broker;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_arrive_in_the_jobs_order() {
    let broker = Broker::start("stream-order");
    let client = broker.client().await;

    let events: Vec<Event> = client
        .execute_streaming(
            "console.log('one');\n\
             const r = await callTool('echo', {n: 2});\n\
             console.error('two', r.n);\n\
             return r.n + 1;",
        )
        .map(|e| e.unwrap())
        .collect()
        .await;
    assert_eq!(events.len(), 5, "{events:#?}");
    assert_eq!(
        events[0],
        Event::Console {
            level: ConsoleLevel::Log,
            text: "one".into()
        }
    );
    let Event::ToolCall {
        call_id,
        ref name,
        ref args,
    } = events[1]
    else {
        panic!("{:?}", events[1]);
    };
    assert_eq!((name.as_str(), args), ("echo", &json!({"n": 2})));
    assert!(
        matches!(&events[2], Event::ToolResult { call_id: c, name, is_error: false } if *c == call_id && name == "echo"),
        "{:?}",
        events[2]
    );
    assert_eq!(
        events[3],
        Event::Console {
            level: ConsoleLevel::Error,
            text: "two 2".into()
        }
    );
    let Event::Final { ref result, stats } = events[4] else {
        panic!("{:?}", events[4]);
    };
    assert_eq!(result, &json!(3));
    assert_eq!(stats.tool_calls, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_stream_ends_with_an_error_event() {
    let broker = Broker::start("stream-error");
    let client = broker.client().await;

    let events: Vec<Event> = client
        .execute_streaming("console.log('x');\nnull.boom")
        .map(|e| e.unwrap())
        .collect()
        .await;
    assert_eq!(events.len(), 2, "{events:#?}");
    let Event::Error { ref failure, stats } = events[1] else {
        panic!("{:?}", events[1]);
    };
    assert_eq!(failure.code, ErrorCode::ScriptError);
    assert_eq!(failure.line, Some(2));
    assert!(stats.is_some());
    assert!(events[1].is_terminal());

    // Several streams at once on one session.
    let streams = (0..8).map(|i| {
        client
            .execute_streaming(format!("console.log({i}); return {i}"))
            .collect::<Vec<_>>()
    });
    for (i, events) in futures::future::join_all(streams)
        .await
        .into_iter()
        .enumerate()
    {
        let last = events.last().unwrap().as_ref().unwrap();
        assert!(matches!(last, Event::Final { result, .. } if result == &json!(i)));
    }
}
