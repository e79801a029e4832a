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

/// Streams the client does not read hold only their own data: other requests on the
/// same client go on (HTTP/2 flow control must not let them take the connection's
/// whole receive window).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_streams_do_not_block_other_requests() {
    let broker = Broker::start("unread");
    let client = broker.client().await;
    // Each job writes ~9 MiB of console output, far past any window, and nobody reads it.
    let noisy =
        "const line = 'x'.repeat(60000); for (let i = 0; i < 150; i++) console.log(line); return 1";
    let mut unread = Vec::new();
    for _ in 0..4 {
        let mut job = enclave_client::Job {
            code: noisy.into(),
            level: enclave_client::SecurityLevel::Permissive as i32,
            ..Default::default()
        };
        job.limits = None;
        let mut events = client.execute_streaming_job(job);
        // Started: its first event has arrived, the rest waits for a reader.
        assert!(matches!(
            events.next().await,
            Some(Ok(Event::Console { .. }))
        ));
        unread.push(events);
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let run = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        client.execute("return 'not blocked'"),
    )
    .await
    .expect("a request on the same client is not blocked by the unread streams")
    .unwrap();
    assert_eq!(run.result, Ok(json!("not blocked")));
    // And the unread streams are still whole when read at last.
    for mut events in unread {
        let mut last = None;
        while let Some(event) = events.next().await {
            last = Some(event.unwrap());
        }
        assert!(matches!(last, Some(Event::Final { .. })), "{last:?}");
    }
}
