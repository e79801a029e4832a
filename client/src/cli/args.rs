//! Flags and environment variables. Every flag has an `ENCLAVE_*` variable, so a
//! deployment configures the client once in its environment and scripts call `enclave run
//! job.js`.

use std::path::PathBuf;

use clap::builder::BoolishValueParser;
use clap::{Args, Parser, Subcommand, ValueEnum};
use enclave_client::{Curve, DEFAULT_SERVER, Fingerprint, SecurityLevel};

#[derive(Debug, Parser)]
#[command(
    name = "enclave",
    version,
    about = "Run JavaScript in an enclave broker's sandbox, end-to-end encrypted"
)]
pub struct Cli {
    /// Log filter for the client's own diagnostics (stderr): error, warn, info, debug.
    #[arg(long, env = "ENCLAVE_LOG", default_value = "warn", global = true)]
    pub log: String,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a script (a file, or `-` for stdin) and print its console output and result.
    Run(RunArgs),
    /// List the tools the broker's scripts may call: name and description, or with
    /// --json one object per tool with its argument schema.
    Tools(ToolsArgs),
    /// Write a new client identity (private key 0600, public key PATH.pub) and print its
    /// fingerprint, for a broker's allow-list.
    Keygen(KeygenArgs),
}

#[derive(Debug, Args)]
pub struct ConnectionArgs {
    /// Broker URL: http://host:port, or https://host:port with --ca-file.
    #[arg(long, env = "ENCLAVE_SERVER", default_value = DEFAULT_SERVER)]
    pub server: String,

    /// Fingerprint of the broker's key (sha256:...), printed by enclave-broker at
    /// start-up. Required: a broker proving any other key is refused.
    #[arg(long, env = "ENCLAVE_PIN", value_parser = parse_pin)]
    pub pin: Fingerprint,

    /// Client identity (PEM private key from `enclave keygen`) for brokers that
    /// authenticate clients.
    #[arg(long, env = "ENCLAVE_IDENTITY")]
    pub identity: Option<PathBuf>,

    /// Key-exchange curve: x25519 or p256.
    #[arg(long, env = "ENCLAVE_CURVE", default_value = "x25519", value_parser = parse_curve)]
    pub curve: Curve,

    /// CA certificate bundle (PEM) for an https:// server.
    #[arg(long, env = "ENCLAVE_CA_FILE")]
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub connection: ConnectionArgs,

    /// Security level (limit preset); the broker's default is STANDARD.
    #[arg(long, env = "ENCLAVE_LEVEL", value_enum, ignore_case = true)]
    pub level: Option<Level>,

    /// JSON value the script sees as the global `input`.
    #[arg(long, env = "ENCLAVE_INPUT")]
    pub input: Option<String>,

    /// Time limit for the job in milliseconds (below the level's preset and the
    /// executor's ceiling).
    #[arg(long, env = "ENCLAVE_TIMEOUT_MS")]
    pub timeout_ms: Option<u64>,

    /// One JSON object per event on stdout instead of console text and the result.
    #[arg(long, env = "ENCLAVE_JSON", value_parser = BoolishValueParser::new())]
    pub json: bool,

    /// The script file, or `-` to read it from stdin.
    pub file: PathBuf,
}

#[derive(Debug, Args)]
pub struct ToolsArgs {
    #[command(flatten)]
    pub connection: ConnectionArgs,

    /// One JSON object per tool (`name`, `description`, `inputSchema`) instead of text.
    #[arg(long, env = "ENCLAVE_JSON", value_parser = BoolishValueParser::new())]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Where to write the private key; the public key goes to PATH.pub. Neither may
    /// exist yet.
    pub path: PathBuf,
}

/// The README's level names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "UPPER")]
pub enum Level {
    Strict,
    Secure,
    Standard,
    Permissive,
}

impl From<Level> for SecurityLevel {
    fn from(level: Level) -> Self {
        match level {
            Level::Strict => SecurityLevel::Strict,
            Level::Secure => SecurityLevel::Secure,
            Level::Standard => SecurityLevel::Standard,
            Level::Permissive => SecurityLevel::Permissive,
        }
    }
}

fn parse_pin(s: &str) -> Result<Fingerprint, String> {
    s.parse::<Fingerprint>().map_err(|e| e.to_string())
}

fn parse_curve(s: &str) -> Result<Curve, String> {
    s.parse::<Curve>().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PIN: &str = "sha256:abb7f16a058a5d546d3645a6fc5c38abb1919cbf18efb4b87467bda2e4b56636";

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("enclave").chain(args.iter().copied()))
    }

    fn run_args(cli: Cli) -> RunArgs {
        match cli.command {
            Command::Run(run) => run,
            other => panic!("expected run, got {other:?}"),
        }
    }

    #[test]
    fn the_parser_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn run_with_flags() {
        let run = run_args(
            parse(&[
                "run",
                "--server",
                "http://10.0.0.1:1",
                "--pin",
                PIN,
                "--curve",
                "P-256",
                "--level",
                "strict",
                "--json",
                "--input",
                "{\"a\":1}",
                "--timeout-ms",
                "250",
                "job.js",
            ])
            .unwrap(),
        );
        assert_eq!(run.connection.server, "http://10.0.0.1:1");
        assert_eq!(run.connection.pin.to_string(), PIN);
        assert_eq!(run.connection.curve, Curve::P256);
        assert_eq!(run.level, Some(Level::Strict));
        assert!(run.json);
        assert_eq!(run.input.as_deref(), Some("{\"a\":1}"));
        assert_eq!(run.timeout_ms, Some(250));
        assert_eq!(run.file, PathBuf::from("job.js"));
        assert_eq!(
            SecurityLevel::from(Level::Permissive),
            SecurityLevel::Permissive
        );
    }

    #[test]
    fn defaults_and_stdin() {
        let run = run_args(parse(&["run", "--pin", PIN, "-"]).unwrap());
        // ENCLAVE_SERVER may be set in a developer's shell; only check when it is not.
        if std::env::var_os("ENCLAVE_SERVER").is_none() {
            assert_eq!(run.connection.server, DEFAULT_SERVER);
        }
        if std::env::var_os("ENCLAVE_CURVE").is_none() {
            assert_eq!(run.connection.curve, Curve::X25519);
        }
        assert_eq!(run.file, PathBuf::from("-"));
    }

    #[test]
    fn bad_values_are_usage_errors() {
        for args in [
            &["run", "--pin", "sha256:nothex", "job.js"][..],
            &["run", "--pin", PIN, "--curve", "ed448", "job.js"],
            &["run", "--pin", PIN, "--level", "paranoid", "job.js"],
            &["run", "--pin", PIN],
            &["keygen"],
            &["frobnicate"],
        ] {
            let err = parse(args)
                .err()
                .unwrap_or_else(|| panic!("{args:?} parsed"));
            assert_eq!(err.exit_code(), 2, "{args:?}");
        }
    }

    #[test]
    fn keygen_takes_a_path() {
        let cli = parse(&["keygen", "/tmp/me.key"]).unwrap();
        assert!(
            matches!(cli.command, Command::Keygen(KeygenArgs { ref path }) if path == &PathBuf::from("/tmp/me.key"))
        );
    }
}
