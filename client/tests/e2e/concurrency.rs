use serde_json::json;

use crate::support::Broker;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_executes_share_one_session() {
    let broker = Broker::start("concurrent");
    let client = broker.client().await;

    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move {
                let run = client
                    .execute(format!(
                        "console.log('job', {i}); const r = await callTool('echo', {{i: {i}}}); return r.i * 2;"
                    ))
                    .await
                    .unwrap();
                assert_eq!(run.console[0].text, format!("job {i}"));
                run.result.unwrap()
            })
        })
        .collect();
    for (i, task) in tasks.into_iter().enumerate() {
        assert_eq!(task.await.unwrap(), json!(i * 2));
    }
    let info = client.session().unwrap();
    assert_eq!(info.handshakes, 1, "one session for all of them: {info:?}");
}
