//! `echo-server`: serves one model with canned responses, as the transport ceiling for
//! benchmarks (see `nereid_loadtest::echo`). Prints `http=PORT grpc=PORT` once listening and
//! runs until SIGINT/SIGTERM.

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use nereid_loadtest::echo::{EchoModel, EchoServer};
use nereid_protocol::DataType;

#[derive(Parser)]
#[command(name = "echo-server", version)]
struct Args {
    /// Address to listen on; keep loopback.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// HTTP port; 0 picks a free one.
    #[arg(long, default_value_t = 0)]
    http_port: u16,
    /// gRPC port; 0 picks a free one.
    #[arg(long, default_value_t = 0)]
    grpc_port: u16,
    /// Model name, input and output names, datatype and dims (without the batch dimension) of
    /// the model to pretend to serve. The defaults are `identity_fp32`'s.
    #[arg(long, default_value = "identity_fp32")]
    model: String,
    #[arg(long, default_value = "INPUT0")]
    input: String,
    #[arg(long, default_value = "OUTPUT0")]
    output: String,
    #[arg(long, default_value = "FP32")]
    datatype: String,
    #[arg(long, default_value = "16")]
    dims: String,
    /// Write `{"http": PORT, "grpc": PORT}` here once listening.
    #[arg(long)]
    port_file: Option<PathBuf>,
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let Some(datatype) = DataType::from_wire(&args.datatype) else {
        eprintln!("error: unknown datatype '{}'", args.datatype);
        return ExitCode::from(2);
    };
    let dims = match nereid_client::cli::parse_dims(&args.dims) {
        Ok(dims) => dims,
        Err(err) => {
            eprintln!("error: --dims: {err}");
            return ExitCode::from(2);
        }
    };
    let model = EchoModel {
        name: args.model,
        input: args.input,
        output: args.output,
        datatype,
        dims,
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let server = EchoServer::start(model, args.host, args.http_port, args.grpc_port).await?;
        if let Some(path) = &args.port_file {
            let body = serde_json::json!({"http": server.http.port(), "grpc": server.grpc.port()});
            let staging = path.with_extension("tmp");
            std::fs::write(&staging, body.to_string())?;
            std::fs::rename(&staging, path)?;
        }
        println!("http={} grpc={}", server.http.port(), server.grpc.port());
        shutdown_signal().await;
        server.stop().await;
        Ok::<_, std::io::Error>(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}
