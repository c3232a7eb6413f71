//! `airlock serve` and `airlock mcp`: the service and MCP over stdio.

use super::Auth;
use airlock::Error;
use airlock::policy::Policy;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

/// `airlock serve`: load every action, listen, and serve until Ctrl-C or
/// SIGTERM. Prints `listening on ADDR` on stdout once ready. `node_id`
/// names this node among those sharing a PostgreSQL store.
pub async fn serve(
    config: PathBuf,
    listen: Option<std::net::SocketAddr>,
    data_dir: Option<PathBuf>,
    node_id: Option<String>,
) -> Result<ExitCode, Error> {
    if let Some(id) = &node_id {
        airlock::cluster::set_node_id(id).map_err(Error::Usage)?;
        // The same name for this node's audit chain.
        airlock::audit::settings::set_node_override(id).map_err(Error::Usage)?;
    }
    let mut policy = Policy::load(&config)?;
    if let Some(dir) = data_dir {
        policy.runtime.data_dir = dir;
    }
    if let Some(addr) = listen {
        policy.service.listen = addr;
    }
    let addr = policy.service.listen;
    let service = std::sync::Arc::new(airlock::service::Service::load(policy)?);
    service.runtime.sweep_approvals().await?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Usage(format!("cannot listen on {addr}: {e}")))?;
    let local = listener.local_addr().map_err(Error::internal)?;
    airlock::cluster::set_address(&local.to_string());
    if !local.ip().is_loopback() {
        eprintln!("warning: listening on {local}, which is not loopback; put TLS in front of it");
    }
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "listening on http://{local}");
        let _ = out.flush();
    }
    let shutdown = async {
        let ctrl_c = tokio::signal::ctrl_c();
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(t) => t,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    };
    airlock::service::serve(service.clone(), listener, shutdown).await?;
    // Hand back what this node holds: its waiting requests fail with a
    // reason, and the other nodes take over its leftovers at once.
    if let Some(approvals) = service.runtime.approvals_opened() {
        match approvals.leave().await {
            Ok(failed) if !failed.is_empty() => {
                eprintln!(
                    "airlock serve: failed {} request(s) whose instances stop here",
                    failed.len()
                );
            }
            Ok(_) => {}
            Err(e) => eprintln!("airlock serve: could not hand back held work: {e}"),
        }
    }
    eprintln!("airlock serve: stopped");
    Ok(ExitCode::SUCCESS)
}

/// `airlock mcp`: MCP over stdio for one agent. Logs go to stderr; stdout
/// carries only the protocol.
pub async fn mcp(config: PathBuf, auth: Auth, data_dir: Option<PathBuf>) -> Result<ExitCode, Error> {
    let mut policy = Policy::load(&config)?;
    if let Some(dir) = data_dir {
        policy.runtime.data_dir = dir;
    }
    let token = auth.required_bearer()?;
    let service = std::sync::Arc::new(airlock::service::Service::load(policy)?);
    let sweeper = airlock::service::spawn_sweeper(service.clone());
    let served = airlock::service::mcp::serve_stdio(service, token).await;
    sweeper.abort();
    served?;
    Ok(ExitCode::SUCCESS)
}
