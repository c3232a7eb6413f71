//! MCP over stdio, as `airlock mcp` serves it: the input is what an agent
//! writes to the server's stdin (newline-delimited JSON-RPC; the token is
//! the server's own, given when it starts, as `airlock mcp` takes it from
//! the environment). The server answers until its input ends.
//!
//! Beyond "no panic": the server stops when its input ends (no hang), and
//! what it writes is JSON-RPC, one message per line, none carrying the
//! token.
#![no_main]

use airlock::service::Service;
use airlock::service::mcp::AirlockMcp;
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;
use rmcp::ServiceExt as _;
use std::sync::{Arc, LazyLock};
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// How long the server may take to answer everything, and then to stop:
/// both within libFuzzer's -timeout=10, so a hang is reported as one.
const PATIENCE: Duration = Duration::from_secs(4);

struct World {
    service: Arc<Service>,
    token: String,
    runtime: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

static WORLD: LazyLock<World> = LazyLock::new(|| {
    let (dir, service) = common::start(&format!(
        r#"
[runtime]
data-dir = "data"

[actions.hello]
component = {}
[actions.hello.access]
invoke = ["role:agent"]
"#,
        common::hello_component()
    ));
    let token = common::token(
        &service,
        "fuzz-agent",
        airlock::identity::IdentityKind::Agent,
        &["agent"],
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    World {
        service,
        token,
        runtime,
        _dir: dir,
    }
});

// The setup runs before the first input, not inside it (where it would
// count against libFuzzer's -timeout).
fuzz_target!(init: { LazyLock::force(&WORLD); }, |data: &[u8]| {
    let world = &*WORLD;
    let output = world.runtime.block_on(async {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let (server_read, server_write) = tokio::io::split(server);
        let (mut client_read, mut client_write) = tokio::io::split(client);
        let handler = AirlockMcp::with_token(world.service.clone(), zeroize::Zeroizing::new(world.token.clone()));
        let serving = tokio::spawn(async move {
            if let Ok(running) = handler.serve((server_read, server_write)).await {
                let _ = running.waiting().await;
            }
        });
        let input = data.to_vec();
        let writer = tokio::spawn(async move {
            let _ = client_write.write_all(&input).await;
            let _ = client_write.shutdown().await;
        });
        let mut output = Vec::new();
        let read = tokio::time::timeout(PATIENCE, client_read.read_to_end(&mut output)).await;
        let stopped = tokio::time::timeout(PATIENCE, serving).await;
        writer.abort();
        let shown = String::from_utf8_lossy(data);
        assert!(read.is_ok(), "the server did not stop writing after its input ended:\n{shown}");
        assert!(stopped.is_ok(), "the server did not stop after its input ended:\n{shown}");
        output
    });
    // The token an input holds itself (libFuzzer learns it from the
    // comparisons the server makes) may come back in an error naming what
    // the input sent; otherwise it must never be written.
    let token = world.token.as_bytes();
    let contains = |haystack: &[u8]| haystack.windows(token.len()).any(|w| w == token);
    assert!(
        contains(data) || !contains(&output),
        "the server wrote its token:\n{}",
        String::from_utf8_lossy(&output)
    );
    for line in output.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let message: serde_json::Value = serde_json::from_slice(line)
            .unwrap_or_else(|e| panic!("a line that is not JSON ({e}): {}", String::from_utf8_lossy(line)));
        assert_eq!(message["jsonrpc"], "2.0", "{message}");
    }
});
