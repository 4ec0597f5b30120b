//! `flanneld`: parse flags, set up logging, run the daemon. All logic lives in the library.

use std::process::ExitCode;

fn main() -> ExitCode {
    let opts = match flanneld::config::Opts::parse_args(std::env::args_os()) {
        Ok(o) => o,
        Err(e) => e.exit(),
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colour only on a terminal: journald and log files get plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            // FLANNELD_LOG (or RUST_LOG) takes tracing's filter syntax, e.g. `debug`.
            // Without either, flannel's `-v` picks the level.
            tracing_subscriber::EnvFilter::try_from_env("FLANNELD_LOG")
                .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
                .unwrap_or_else(|_| {
                    tracing_subscriber::EnvFilter::new(
                        opts.log_filter_from_verbosity().unwrap_or("info"),
                    )
                }),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("flanneld: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = if opts.cleanup {
        runtime.block_on(async {
            let removed = flanneld::cleanup::run(&opts).await?;
            tracing::info!(?removed, "node state removed; the etcd lease is kept");
            Ok(())
        })
    } else {
        runtime.block_on(flanneld::daemon::run(opts))
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}
