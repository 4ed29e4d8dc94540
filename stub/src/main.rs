//! `agentfleet-stub llm …` serves the OpenAI-compatible stub; `agentfleet-stub tools …` serves
//! the counting tool server; `agentfleet-stub webhook …` serves a verifying webhook receiver
//! that prints each delivery as a JSON line; `agentfleet-stub sign …` prints the signature
//! header agentfleet would send, for checks with other Standard Webhooks implementations.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use agentfleet_common::signing::{SigningKeys, WebhookSecret};
use agentfleet_stub::llm::{Behavior, Fault, StubLlm};
use agentfleet_stub::receiver::Receiver;
use agentfleet_stub::script::ModelScenario;
use agentfleet_stub::tools::ToolServer;

#[derive(Parser)]
#[command(
    version,
    about = "Local LLM stub, tool server and webhook receiver for agentfleet demos and tests"
)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// An OpenAI-compatible /v1/chat/completions stub.
    Llm(LlmArgs),
    /// An HTTP tool server that counts calls (/lookup, /orders, /payments, /big, /slow, /fail).
    Tools {
        #[arg(long, default_value = "127.0.0.1:9100")]
        listen: SocketAddr,
        /// Added to every request before it is answered (a real tool's round trip).
        #[arg(long, default_value_t = 0)]
        latency_ms: u64,
    },
    /// A webhook receiver that verifies signatures and prints deliveries.
    Webhook {
        #[arg(long, default_value = "127.0.0.1:9000")]
        listen: SocketAddr,
        /// Environment variable holding the whsec_ secret to verify with.
        #[arg(long)]
        secret_env: String,
    },
    /// Prints the `webhook-signature` header agentfleet sends for the body on stdin, signed
    /// with every secret in the environment variable (space-separated, as during a rotation):
    /// for checking signatures with another Standard Webhooks implementation.
    Sign {
        #[arg(long)]
        secrets_env: String,
        #[arg(long)]
        id: String,
        #[arg(long)]
        timestamp: i64,
    },
}

#[derive(clap::Args)]
struct LlmArgs {
    #[arg(long, default_value = "127.0.0.1:8000")]
    listen: SocketAddr,
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    #[arg(long, default_value_t = 12)]
    prompt_tokens: u64,
    #[arg(long, default_value_t = 8)]
    completion_tokens: u64,
    /// Probability (0..1) that a call fails with a 500 or a 429 (Retry-After: 1).
    #[arg(long, default_value_t = 0.0)]
    fault_rate: f64,
    /// MODEL=SCENARIO: answer MODEL from a built-in scenario (tool-then-answer,
    /// parallel-tools, five-turns, loop-forever). Repeatable; without any, the environment
    /// variable is read as a comma-separated list.
    #[arg(
        long = "scenario",
        env = "AGENTFLEET_STUB_SCENARIOS",
        value_delimiter = ',',
        value_name = "MODEL=SCENARIO"
    )]
    scenarios: Vec<ModelScenario>,
}

impl LlmArgs {
    fn stub(self) -> anyhow::Result<StubLlm> {
        if !(0.0..=1.0).contains(&self.fault_rate) {
            anyhow::bail!("--fault-rate must be between 0 and 1");
        }
        let stub = StubLlm::new(Behavior {
            latency: Duration::from_millis(self.latency_ms),
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.completion_tokens,
            fault_rate: self.fault_rate,
            random_faults: vec![
                Fault::Status {
                    status: 500,
                    retry_after: None,
                },
                Fault::Status {
                    status: 429,
                    retry_after: Some(1),
                },
            ],
        });
        for ModelScenario { model, scenario } in self.scenarios {
            tracing::info!(%model, turns = scenario.turns().len(), "model scripted");
            stub.script_model(&model, scenario);
        }
        Ok(stub)
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber_init();
    match Args::parse().command {
        Command::Llm(args) => {
            let listen = args.listen;
            serve(listen, args.stub()?.router()).await
        }
        Command::Tools { listen, latency_ms } => {
            let server = ToolServer::with_latency(Duration::from_millis(latency_ms));
            serve(listen, server.router()).await
        }
        Command::Webhook { listen, secret_env } => {
            let raw = std::env::var(&secret_env)
                .with_context(|| format!("environment variable {secret_env} is not set"))?;
            let secret = WebhookSecret::parse(&raw).with_context(|| secret_env.clone())?;
            serve(listen, Receiver::new(Some(secret)).router()).await
        }
        Command::Sign {
            secrets_env,
            id,
            timestamp,
        } => {
            let raw = std::env::var(&secrets_env)
                .with_context(|| format!("environment variable {secrets_env} is not set"))?;
            let keys = SigningKeys::parse(&raw).with_context(|| secrets_env.clone())?;
            let mut body = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut body)?;
            println!("{}", keys.sign(&id, timestamp, &body));
            Ok(())
        }
    }
}

async fn serve(listen: SocketAddr, router: axum::Router) -> anyhow::Result<()> {
    let listener = agentfleet_stub::bind(listen).with_context(|| format!("binding {listen}"))?;
    tracing::info!(%listen, "stub listening");
    tokio::select! {
        () = agentfleet_stub::serve(listener, router) => {}
        () = agentfleet_common::shutdown::signal() => {}
    }
    Ok(())
}

fn tracing_subscriber_init() {
    agentfleet_common::telemetry::init(&agentfleet_common::config::TelemetryConfig::default());
}
