//! `tandem`: two-way sync between business systems.

/// Rows, keys and values are many small allocations, made and freed a batch at a time: glibc's
/// allocator took about a fifth of the engine thread. jemalloc, with freed memory handed back
/// soon (`.cargo/config.toml`), took 13–28% off Tandem's CPU in load and catch-up
/// for a peak RSS of 112 MB against 90 (mimalloc reached 157 MB).
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

mod admin;
mod commands;
mod config;
mod demo;
mod error;
mod format;
mod plan;
mod runner;
mod schema_check;

use clap::{Parser, Subcommand, ValueEnum};
use error::CliError;
use std::path::PathBuf;

/// Two-way data sync between business systems.
#[derive(Parser)]
#[command(name = "tandem", version, about)]
struct Cli {
    /// Log line format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Create crm.db, erp.db and tandem.toml here and show changes flowing both ways.
    Demo {
        /// Folder to create the demo in.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Sync continuously until Ctrl-C (or, with --once, until both sides are caught up).
    Run {
        #[arg(short, long, default_value = "tandem.toml")]
        config: PathBuf,
        /// Sync until caught up, print a summary and exit.
        #[arg(long)]
        once: bool,
    },
    /// Validate the config against the systems without writing anything.
    Check {
        #[arg(short, long, default_value = "tandem.toml")]
        config: PathBuf,
    },
    /// Show what the first (or next) sync would do, per sync, without writing anything.
    Plan {
        #[arg(short, long, default_value = "tandem.toml")]
        config: PathBuf,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Show per sync: records linked, pending changes, last sync, conflicts, dead letters.
    Status {
        #[arg(short, long, default_value = "tandem.toml")]
        config: PathBuf,
    },
    /// List held conflicts, or resolve one.
    Conflicts {
        #[arg(short, long, default_value = "tandem.toml")]
        config: PathBuf,
        /// The conflict to resolve.
        #[arg(long)]
        resolve: Option<i64>,
        /// Keep this side's value.
        #[arg(long, value_enum, requires = "resolve", conflicts_with = "value")]
        take: Option<TakeSide>,
        /// Write this value to both sides.
        #[arg(long, requires = "resolve")]
        value: Option<String>,
        /// Also list resolved conflicts.
        #[arg(long)]
        all: bool,
    },
    /// List records that could not be synced, or queue them again.
    DeadLetters {
        #[arg(short, long, default_value = "tandem.toml")]
        config: PathBuf,
        /// Queue these dead letters again (by id).
        #[arg(long, num_args = 1..)]
        retry: Vec<i64>,
        /// Queue every dead letter again.
        #[arg(long, conflicts_with = "retry")]
        retry_all: bool,
    },
    /// Show the audit trail: of one record with --key (and why a field has its value with
    /// --field), by time, rule or kind; `audit verify` checks its hash chain.
    Audit {
        #[arg(short, long, default_value = "tandem.toml")]
        config: PathBuf,
        /// A record's key on either side (`7` or `[7]`).
        #[arg(long)]
        key: Option<String>,
        /// With --key: only what set this field, ending with why it has its value.
        #[arg(long, requires = "key")]
        field: Option<String>,
        /// Only this sync.
        #[arg(long)]
        sync: Option<String>,
        /// From this time: 2026-11-26, 2026-11-26T14:30:00Z (UTC), or back from now: 15m, 2h, 7d.
        #[arg(long)]
        from: Option<String>,
        /// Until this time (same forms as --from).
        #[arg(long)]
        to: Option<String>,
        /// Only decisions by this rule (latest, prefer, hold, merge_lines, match_on, operator).
        #[arg(long)]
        rule: Option<String>,
        /// Only rows of this kind (apply, create, delete, decision, conflict, resolve, dead_letter, …).
        #[arg(long)]
        kind: Option<String>,
        /// Show at most this many rows (the latest).
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[command(subcommand)]
        action: Option<AuditAction>,
    },
    /// Remove Tandem's change capture from the systems: SQLite triggers and change logs,
    /// PostgreSQL slots, publications and origins, MariaDB marker rows.
    Uninstall {
        #[arg(short, long, default_value = "tandem.toml")]
        config: PathBuf,
    },
}

#[derive(Subcommand)]
enum AuditAction {
    /// Check the audit trail's hash chain: every row unchanged, none removed or inserted.
    Verify {
        #[arg(short, long, default_value = "tandem.toml")]
        config: PathBuf,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum TakeSide {
    Left,
    Right,
}

fn init_logs(format: LogFormat, default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TANDEM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() {
    // Both rustls crypto providers are in the tree; pick one before anything builds a TLS config.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    // Reporting commands end quietly when their reader goes away (`tandem audit | head`), as
    // command-line tools do; `run` keeps ignoring SIGPIPE so a closed log pipe cannot kill it.
    if !matches!(cli.command, Command::Run { .. }) {
        sigpipe::reset();
    }
    // The demo narrates on stdout; batch log lines would only repeat it.
    init_logs(cli.log_format, if matches!(cli.command, Command::Demo { .. }) { "warn" } else { "info" });
    let result = match cli.command {
        Command::Demo { dir } => demo::run(&dir),
        Command::Run { config, once } => commands::run(&config, once),
        Command::Check { config } => commands::check(&config),
        Command::Plan { config, json } => plan::plan(&config, json),
        Command::Status { config } => commands::status(&config),
        Command::Conflicts { config, resolve, take, value, all } => {
            let how = match (take, value) {
                (Some(TakeSide::Left), _) => Some(tandem_core::engine::Resolution::Left),
                (Some(TakeSide::Right), _) => Some(tandem_core::engine::Resolution::Right),
                (None, Some(v)) => Some(tandem_core::engine::Resolution::Value(tandem_core::value::Value::Text(v))),
                (None, None) => None,
            };
            match (resolve, how) {
                (Some(_), None) => {
                    Err(CliError::Usage("--resolve needs --take left, --take right or --value VALUE".into()))
                }
                (id, how) => commands::conflicts(&config, id.zip(how), all),
            }
        }
        Command::DeadLetters { config, retry, retry_all } => commands::dead_letters(&config, &retry, retry_all),
        Command::Audit { action: Some(AuditAction::Verify { config }), .. } => commands::audit_verify(&config),
        Command::Audit { config, key, field, sync, from, to, rule, kind, limit, action: None } => {
            let args = commands::AuditArgs { key, field, sync, from, to, rule, kind, limit };
            commands::audit(&config, &args)
        }
        Command::Uninstall { config } => commands::uninstall(&config),
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(e.exit_code());
    }
}
