//! The `sticky-cluster` binary: parse the command line, install logging, run the cluster.
//! Exit codes: 0 after a clean stop, 1 when the cluster could not run, 2 for bad usage or
//! settings.

use std::process::ExitCode;

use sticky_cluster::{Cluster, Error};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    match try_main() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sticky-cluster: error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn try_main() -> Result<ExitCode, Error> {
    if Cluster::is_worker() {
        // A re-executed demo worker: no flags to read, only PORT and WORKER_ID.
        init_logging(false);
        Cluster::builder().run(sticky_cluster::demo_worker)?;
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(parsed) = sticky_cluster::internal::cli::control(std::env::args_os()) {
        return match parsed {
            Ok(control) => Ok(ExitCode::from(
                sticky_cluster::internal::admin::client::run(&control),
            )),
            Err(e) if !e.use_stderr() => {
                let _ = e.print();
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => Err(Error::Usage(e)),
        };
    }
    let cluster = match Cluster::from_args() {
        Ok(cluster) => cluster,
        // --help and --version print to stdout and succeed; usage errors are one line, exit 2.
        Err(Error::Usage(e)) if !e.use_stderr() => {
            let _ = e.print();
            return Ok(ExitCode::SUCCESS);
        }
        Err(e) => return Err(e),
    };
    init_logging(cluster.settings().debug);
    cluster.run(sticky_cluster::demo_worker)?;
    Ok(ExitCode::SUCCESS)
}

fn init_logging(debug: bool) {
    let default = if debug {
        "sticky_cluster=debug,info"
    } else {
        "info"
    };
    let filter =
        EnvFilter::try_from_env("STICKY_CLUSTER_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(|| LossyStderr)
        .init();
}

/// Stderr that drops what it cannot write: a worker whose supervisor is gone (its stderr
/// pipe closed) must still be able to log on its way out instead of panicking.
struct LossyStderr;

impl std::io::Write for LossyStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}
