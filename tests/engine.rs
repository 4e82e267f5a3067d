//! The systemd engine against a real systemd manager.

mod support;

use std::time::Duration;

use prism_launcher::{systemd::Systemd, unit};
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke() {
    let Some(h) = harness!() else { return };
    let engine = h.engine().await;
    let p = h.process(pattern("kv-1", &h.demo, &[]));
    let spec = unit::translate(&p);
    let t = std::time::Instant::now();
    let r = engine.start_transient(&spec).await;
    eprintln!("start took {:?}: {r:?}", t.elapsed());
    r.expect("start");
    let status = engine.status(&spec.name).await.expect("status");
    println!("{status:?}");
    assert_eq!(status.active_state, "active");
    let stopped = engine
        .stop(&spec.name, Duration::from_secs(5))
        .await
        .expect("stop");
    println!("{stopped:?}");
    assert!(h.listed_units().is_empty());
}
