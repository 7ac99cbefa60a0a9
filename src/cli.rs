//! Command line: serve (from a config file or `--upstream`), the demo (no arguments), the mock
//! upstream on its own, `check-config`, and `hash-key` (an API key's hash for the keys file).
//! While serving, SIGHUP reloads the API keys file and the TLS certificate. (The load driver is
//! its own binary, `tidegate-bench`, in `loadtest/driver/`.)
//!
//! The configuration is loaded and validated completely before anything binds; an invalid one
//! prints every error with its key path and exits with 64 (EX_USAGE, as linkerd2-proxy does).

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::auth::{self, Keys};
use crate::config::{
    Config, ConfigError, ConfigErrors, LogFormat, UpstreamUrl, DEFAULT_LISTEN_BACKLOG,
};
use crate::gateway::{self, Listeners, LiveStreams};
use crate::mock::{MockSettings, MockUpstream};
use crate::signals::{Hangups, Signals};
use crate::tls::{self, ServerTls, Validity};
use crate::{logging, sys};

/// Exit code for an invalid configuration.
pub const EXIT_CONFIG: u8 = 64;
/// Exit code when the gateway cannot start or fails while running (e.g. a port in use).
pub const EXIT_FAILURE: u8 = 1;

/// Where the demo's gateway listens unless `--listen` says otherwise.
pub const DEMO_LISTEN: &str = "127.0.0.1:8080";

/// The mock's per-request override headers, forwarded in demo mode.
pub const DEMO_FORWARD_HEADERS: &str = "x-mock-*";

/// The demo's drain on Ctrl-C: long enough to see streams finish, short enough that nobody
/// waits out the production default (`shutdown.drain_timeout`, 30 s) at a terminal.
pub const DEMO_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the demo's admin listener goes unless `--admin-listen` says otherwise: any free
/// loopback port, so the banner can print a URL that works without a clash with another run.
pub const DEMO_ADMIN_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

/// Most bytes `hash-key` reads from stdin: an API key travels in a request header, which
/// `limits.max_header_bytes` bounds far below this.
pub const MAX_HASHED_KEY_BYTES: u64 = 64 * 1024;

/// Shorter keys get a warning from `hash-key`: 20 random characters or more cannot be guessed.
pub const MIN_RECOMMENDED_KEY_BYTES: usize = 20;

#[derive(Debug, Parser)]
#[command(
    name = "tidegate",
    version,
    about = "A gateway that relays streaming OpenAI-compatible chat completions as Server-Sent Events",
    long_about = "A gateway that relays streaming OpenAI-compatible chat completions as Server-Sent Events.\n\n\
        With no arguments tidegate runs a demo: its built-in mock upstream on an ephemeral loopback \
        port and the gateway on 127.0.0.1:8080 in front of it, and prints a curl command to try.\n\
        With --config FILE (or TIDEGATE_CONFIG) or --upstream URL it serves a real upstream."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// TOML configuration file (see the README's config reference)
    #[arg(long, env = "TIDEGATE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Address of the client-facing listener (overrides `listen`)
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,

    /// Address of the operator listener with /healthz and /readyz (overrides `admin.listen`)
    #[arg(long, value_name = "ADDR")]
    pub admin_listen: Option<SocketAddr>,

    /// Name of the environment variable holding the admin bearer token, required when the admin
    /// listener is not on loopback (overrides `admin.token_env`)
    #[arg(long, value_name = "NAME")]
    pub admin_token_env: Option<String>,

    /// Upstream base URL, e.g. https://api.openai.com/v1 (overrides `upstream.base_url`)
    #[arg(long, value_name = "URL")]
    pub upstream: Option<String>,

    /// Extra client headers forwarded to the upstream, comma-separated; a trailing `*` matches
    /// a prefix, e.g. 'x-mock-*' for the built-in mock's per-request settings (overrides
    /// `upstream.forward_headers`)
    #[arg(long, value_name = "NAMES", value_delimiter = ',')]
    pub forward_headers: Option<Vec<String>>,

    /// Log format: text or json (overrides `log.format`)
    #[arg(long, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,

    /// This instance's name in stream ids, for routing resumes in a fleet (overrides
    /// `resume.instance_id`; one config file can then serve every instance)
    #[arg(long, env = "TIDEGATE_INSTANCE_ID", value_name = "NAME")]
    pub instance_id: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the built-in mock upstream (an OpenAI-compatible fake backend) on its own
    MockUpstream {
        /// Address to listen on
        #[arg(long, default_value = "127.0.0.1:8081", value_name = "ADDR")]
        listen: SocketAddr,
        /// Content chunks per streamed completion
        #[arg(long, value_name = "N")]
        chunks: Option<u32>,
        /// Delay between chunks, in milliseconds
        #[arg(long, value_name = "MS")]
        chunk_delay_ms: Option<u64>,
        /// HTTP/2 streams allowed at once on each connection (SETTINGS_MAX_CONCURRENT_STREAMS)
        #[arg(long, value_name = "N")]
        h2_max_concurrent_streams: Option<u32>,
        /// Log format: text or json
        #[arg(long, value_name = "FORMAT", default_value = "text")]
        log_format: LogFormat,
    },
    /// Validate a config file and print the effective config with secrets redacted
    /// (exit code 64 and every error with its key path when invalid)
    CheckConfig {
        /// The TOML file to check
        file: PathBuf,
    },
    /// Print the SHA-256 (lower-case hex) of an API key read from stdin, for the `sha256` of a
    /// `[[keys]]` entry in the keys file (`auth.keys_file`); one trailing newline is ignored.
    /// Example: `openssl rand -hex 24 | tee key.txt | tidegate hash-key`
    HashKey,
}

/// Runs the command line; returns the process exit code.
pub fn main(cli: Cli) -> ExitCode {
    // First, before the heap grows: the gateway and the mock both hold thousands of small
    // per-stream allocations.
    let huge_pages = sys::disable_transparent_huge_pages();
    match cli.command {
        Some(Command::CheckConfig { ref file }) => check_config(file),
        Some(Command::HashKey) => hash_key(&mut std::io::stdin().lock(), &mut std::io::stdout()),
        Some(Command::MockUpstream {
            listen,
            chunks,
            chunk_delay_ms,
            h2_max_concurrent_streams,
            log_format,
        }) => {
            let mut settings = MockSettings::default();
            if let Some(n) = chunks {
                settings.chunks = n;
            }
            if let Some(ms) = chunk_delay_ms {
                settings.chunk_delay = Duration::from_millis(ms);
            }
            if let Some(n) = h2_max_concurrent_streams {
                settings.h2_max_concurrent_streams = n;
            }
            logging::init(log_format, logging_filter("info"));
            block_on(run_mock(listen, settings))
        }
        None => serve(cli, huge_pages),
    }
}

fn logging_filter(level: &str) -> tracing_subscriber::EnvFilter {
    logging::parse_filter(level).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
}

fn block_on(fut: impl std::future::Future<Output = ExitCode>) -> ExitCode {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(fut),
        Err(e) => {
            eprintln!("tidegate: cannot start the async runtime: {e}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

fn print_config_errors(source: &str, errors: &ConfigErrors) {
    eprintln!("tidegate: invalid configuration ({source}):");
    for e in &errors.0 {
        eprintln!("  {e}");
    }
}

/// The config file as read, and the problems found so far that still left a config (unknown
/// keys): [`finish_config`] reports them with every other one in one pass.
fn read_config_file(path: &Path) -> Result<(Config, Vec<ConfigError>), ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            path: "(file)".into(),
            message: format!("cannot read {}: {e}", path.display()),
        }])
    })?;
    Config::read_toml(&text)
}

/// What [`finish_config`] read besides the config: the API keys and the TLS certificate.
struct Loaded {
    keys: Option<Arc<Keys>>,
    /// The TLS of `[tls]` and how long its certificate has left.
    tls: Option<(Arc<ServerTls>, Validity)>,
}

/// Everything a config must pass before anything binds: the file's own rules, the environment
/// (the upstream key, the admin token), the log filter, the API keys file, and the TLS
/// certificate and key (readable, matching, within their validity); returns what it read.
/// `found` holds what reading the file found already (unknown keys). The rules, the
/// environment and the log filter are reported together, so a missing variable shows up in the
/// same pass as a bad value; the files are read once those pass.
fn finish_config(config: &mut Config, found: Vec<ConfigError>) -> Result<Loaded, ConfigErrors> {
    let mut errors = found;
    if let Err(ConfigErrors(mut broken)) = config.validate() {
        errors.append(&mut broken);
    }
    if let Err(ConfigErrors(mut missing)) = config.resolve_secrets(|name| std::env::var(name).ok())
    {
        errors.append(&mut missing);
    }
    if let Err(message) = logging::parse_filter(&config.log.level) {
        errors.push(ConfigError {
            path: "log.level".into(),
            message,
        });
    }
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    let keys = Keys::from_config(&config.auth)?;
    let tls = ServerTls::from_config(&config.tls).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            path: e.key_path().into(),
            message: e.to_string(),
        }])
    })?;
    Ok(Loaded { keys, tls })
}

fn check_config(path: &Path) -> ExitCode {
    let result = read_config_file(path).and_then(|(mut config, found)| {
        let loaded = finish_config(&mut config, found)?;
        // Printing fails only for a config validate() rejects; report it as a config error.
        let printed = config.to_redacted_toml().map_err(ConfigErrors::from)?;
        let keys_line = loaded
            .keys
            .map(|keys| format!("# auth.keys_file: {} keys, valid\n", keys.current().len()));
        let tls_line = loaded.tls.map(|(_, validity)| match validity {
            Validity::Valid => "# tls.cert_file: certificate and key valid\n".to_owned(),
            Validity::ExpiresSoon { left } => {
                // A warning, not an error: it still serves, but not for long.
                eprintln!(
                    "tidegate: warning: tls.cert_file: the certificate expires in {} (less than \
                     {} days): renew it",
                    humantime::format_duration(left),
                    tls::EXPIRY_WARNING.as_secs() / 86_400
                );
                "# tls.cert_file: certificate and key valid, expiring soon\n".to_owned()
            }
        });
        Ok((
            printed,
            format!(
                "{}{}",
                keys_line.unwrap_or_default(),
                tls_line.unwrap_or_default()
            ),
        ))
    });
    match result {
        Ok((printed, loaded_lines)) => {
            println!("# {}: valid", path.display());
            print!("{loaded_lines}{printed}");
            ExitCode::SUCCESS
        }
        Err(errors) => {
            print_config_errors(&path.display().to_string(), &errors);
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

/// `tidegate hash-key`: the SHA-256 of the key on `input` (one trailing newline ignored), in
/// lower-case hex and a newline on `output`. An empty key, or one that cannot be sent in an
/// `Authorization` header, is refused with [`EXIT_CONFIG`]; the key is never printed.
pub fn hash_key(input: &mut impl Read, output: &mut impl Write) -> ExitCode {
    let refuse = |message: &str| {
        eprintln!("tidegate hash-key: {message}");
        ExitCode::from(EXIT_CONFIG)
    };
    let mut key = Vec::new();
    if let Err(e) = input.take(MAX_HASHED_KEY_BYTES + 1).read_to_end(&mut key) {
        return refuse(&format!("cannot read the key from stdin: {e}"));
    }
    if key.len() as u64 > MAX_HASHED_KEY_BYTES {
        return refuse(&format!(
            "more than {MAX_HASHED_KEY_BYTES} bytes on stdin: not an API key"
        ));
    }
    let key = key
        .strip_suffix(b"\n")
        .map(|k| k.strip_suffix(b"\r").unwrap_or(k))
        .unwrap_or(&key);
    if key.is_empty() {
        return refuse("no key on stdin: pipe the key in, e.g. `tidegate hash-key < key.txt`");
    }
    if !key.iter().all(u8::is_ascii_graphic) {
        return refuse(
            "the key holds spaces, control or non-ASCII characters, which cannot be sent in an \
             Authorization header; use letters, digits and punctuation only",
        );
    }
    if key.len() < MIN_RECOMMENDED_KEY_BYTES {
        eprintln!(
            "tidegate hash-key: warning: the key is shorter than {MIN_RECOMMENDED_KEY_BYTES} \
             characters; long random keys (e.g. `openssl rand -hex 24`) cannot be guessed"
        );
    }
    match writeln!(output, "{}", hex::encode(auth::hash_key(key))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tidegate hash-key: cannot write the hash: {e}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

fn serve(cli: Cli, huge_pages: sys::HugePages) -> ExitCode {
    let demo = cli.config.is_none() && cli.upstream.is_none();
    let (mut config, found) = match &cli.config {
        Some(path) => match read_config_file(path) {
            Ok(read) => read,
            Err(errors) => {
                print_config_errors(&path.display().to_string(), &errors);
                return ExitCode::from(EXIT_CONFIG);
            }
        },
        None => (Config::default(), Vec::new()),
    };
    if let Err(errors) = apply_overrides(&mut config, &cli, demo) {
        print_config_errors("command line", &errors);
        return ExitCode::from(EXIT_CONFIG);
    }
    let loaded = match finish_config(&mut config, found) {
        Ok(loaded) => loaded,
        Err(errors) => {
            let source = match &cli.config {
                Some(path) => format!("{} with the command line", path.display()),
                None => "effective configuration".to_owned(),
            };
            print_config_errors(&source, &errors);
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    logging::init(config.log.format, logging_filter(&config.log.level));
    match sys::raise_nofile_limit() {
        Ok(l) => tracing::info!(
            before = l.before,
            after = l.after,
            hard = l.hard,
            "open-files limit raised to the hard limit"
        ),
        Err(e) => tracing::warn!(error = %e, "could not raise the open-files limit"),
    }
    match huge_pages {
        sys::HugePages::Disabled => tracing::info!("transparent huge pages off for this process"),
        sys::HugePages::Unchanged => tracing::warn!(
            "could not turn transparent huge pages off; RSS per stream may be higher"
        ),
    }
    block_on(serve_async(config, demo, loaded))
}

fn apply_overrides(config: &mut Config, cli: &Cli, demo: bool) -> Result<(), ConfigErrors> {
    if let Some(addr) = cli.listen {
        config.listen = addr;
    } else if demo {
        config.listen = DEMO_LISTEN.parse().map_err(|_| {
            ConfigErrors(vec![ConfigError {
                path: "listen".into(),
                message: "invalid demo address".into(),
            }])
        })?;
    }
    if let Some(addr) = cli.admin_listen {
        config.admin.listen = Some(addr);
    }
    if let Some(name) = &cli.admin_token_env {
        config.admin.token_env = Some(name.clone());
    }
    if let Some(url) = &cli.upstream {
        if !config.upstreams.is_empty() {
            return Err(ConfigErrors(vec![ConfigError {
                path: "--upstream".into(),
                message: "sets the base URL of the single [upstream], but the config file has \
                          [[upstreams]]; set base_url in the file instead"
                    .into(),
            }]));
        }
        config.upstream.base_url = UpstreamUrl::parse(url).map_err(|message| {
            ConfigErrors(vec![ConfigError {
                path: "--upstream".into(),
                message,
            }])
        })?;
    }
    if let Some(names) = &cli.forward_headers {
        if !config.upstreams.is_empty() {
            return Err(ConfigErrors(vec![ConfigError {
                path: "--forward-headers".into(),
                message: "sets forward_headers of the single [upstream], but the config file \
                          has [[upstreams]]; set forward_headers in the file instead"
                    .into(),
            }]));
        }
        // Checked with the rest of the config (upstream.forward_headers' rules).
        config.upstream.forward_headers = names
            .iter()
            .map(|n| n.trim().to_owned())
            .filter(|n| !n.is_empty())
            .collect();
    }
    if let Some(format) = cli.log_format {
        config.log.format = format;
    }
    if let Some(id) = &cli.instance_id {
        // Checked with the rest of the config (resume.instance_id's rules).
        config.resume.instance_id = Some(id.trim().to_owned());
    }
    if demo {
        // The mock needs no key; never send a real one to it. Its per-request override
        // headers (x-mock-chunks, ...) are let through so the demo can be steered.
        config.upstream.api_key_env = None;
        config.upstream.forward_headers = vec![DEMO_FORWARD_HEADERS.to_owned()];
        config.shutdown.drain_timeout = DEMO_DRAIN_TIMEOUT;
        // The banner prints the admin URL: the demo always has one to print.
        if config.admin.listen.is_none() {
            config.admin.listen = Some(DEMO_ADMIN_LISTEN);
        }
        // The page at / resumes a cut stream by itself.
        config.demo.page = true;
        config.resume.enabled = true;
    }
    Ok(())
}

fn bind(addr: SocketAddr, backlog: u32, what: &str) -> Result<TcpListener, ExitCode> {
    sys::listen(addr, backlog).map_err(|e| {
        tracing::error!(%addr, error = %e, "cannot listen for the {what}");
        eprintln!("tidegate: cannot listen on {addr} for the {what}: {e}");
        ExitCode::from(EXIT_FAILURE)
    })
}

async fn serve_async(mut config: Config, demo: bool, loaded: Loaded) -> ExitCode {
    let Loaded { keys, tls } = loaded;
    let tls = tls.map(|(tls, validity)| {
        if let Some(file) = &config.tls.cert_file {
            tls::log_validity(file, validity, "TLS certificate loaded");
        }
        tls
    });
    let shutdown = CancellationToken::new();
    let mut mock_stop = None;
    if demo {
        let listener = match bind(
            ([127, 0, 0, 1], 0).into(),
            DEFAULT_LISTEN_BACKLOG,
            "demo mock upstream",
        ) {
            Ok(l) => l,
            Err(code) => return code,
        };
        let addr = match listener.local_addr() {
            Ok(a) => a,
            Err(e) => {
                eprintln!("tidegate: mock upstream address: {e}");
                return ExitCode::from(EXIT_FAILURE);
            }
        };
        let stop = CancellationToken::new();
        tokio::spawn(MockUpstream::new(MockSettings::default()).serve(listener, stop.clone()));
        mock_stop = Some(stop);
        match UpstreamUrl::parse(&format!("http://{addr}/v1")) {
            Ok(url) => config.upstream.base_url = url,
            Err(e) => {
                eprintln!("tidegate: mock upstream URL: {e}");
                return ExitCode::from(EXIT_FAILURE);
            }
        }
    }

    let api = match bind(config.listen, config.limits.listen_backlog, "API") {
        Ok(l) => l,
        Err(code) => return code,
    };
    let admin = match config.admin.listen {
        Some(addr) => match bind(addr, config.limits.listen_backlog, "admin listener") {
            Ok(l) => Some(l),
            Err(code) => return code,
        },
        None => None,
    };
    // Before the "listening" line: whoever reads it may signal at once, and a signal that
    // arrives before the handlers exist kills the process instead of draining it.
    let signals = Signals::new();
    let hangups = Hangups::new();
    let listen = api.local_addr().unwrap_or(config.listen);
    let admin_addr = admin.as_ref().and_then(|l| l.local_addr().ok());
    tracing::info!(
        listen = %listen,
        admin = ?admin_addr,
        upstream = config.upstream.base_url.as_str(),
        "tidegate listening"
    );
    if demo {
        print_demo_banner(&DemoBanner {
            listen,
            admin: admin_addr,
            mock: config.upstream.base_url.as_str(),
            pid: std::process::id(),
            drain_timeout: config.shutdown.drain_timeout,
        });
    }

    let live_streams = LiveStreams::default();
    tokio::spawn(watch_signals(
        signals,
        shutdown.clone(),
        live_streams.clone(),
        config.shutdown.drain_timeout,
    ));
    if let Some(keys) = &keys {
        tracing::info!(keys = keys.current().len(), "API keys loaded");
    }
    tokio::spawn(reload_on_hangup(hangups, keys.clone(), tls.clone()));
    let result = gateway::run_counting_streams(
        config,
        Listeners { api, admin },
        shutdown,
        keys,
        tls,
        live_streams,
    )
    .await;
    if let Some(stop) = mock_stop {
        stop.cancel();
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "gateway failed");
            eprintln!("tidegate: {e}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// What the demo's banner names.
struct DemoBanner<'a> {
    listen: SocketAddr,
    admin: Option<SocketAddr>,
    mock: &'a str,
    pid: u32,
    drain_timeout: Duration,
}

fn print_demo_banner(banner: &DemoBanner<'_>) {
    println!("{}", demo_banner_text(banner));
}

/// The banner: where everything is, a request to paste, and the process id (for
/// `tidegate-bench --pid`) with the admin URL (to watch the streams).
fn demo_banner_text(banner: &DemoBanner<'_>) -> String {
    let DemoBanner {
        listen,
        admin,
        mock,
        pid,
        drain_timeout,
    } = *banner;
    let admin_line = match admin {
        Some(admin) => {
            format!("Admin API: http://{admin} (live streams: curl http://{admin}/admin/streams)\n")
        }
        None => "Add --admin-listen 127.0.0.1:9090 to list and end live streams.\n".to_owned(),
    };
    format!(
        "\ntidegate demo: gateway on http://{listen}, built-in mock upstream on {mock}\n\
         Open http://{listen}/ in a browser for the demo chat page.\n\
         Process id: {pid} (load it: tidegate-bench --url http://{listen} --streams 100 --pid tidegate={pid})\n\
         {admin_line}\
         Stream a completion (no API key needed):\n\n  \
         curl -N http://{listen}/v1/chat/completions \\\n    \
         -H 'Content-Type: application/json' \\\n    \
         -d '{{\"model\":\"mock-1\",\"stream\":true,\"messages\":[{{\"role\":\"user\",\"content\":\"Hello\"}}]}}'\n\n\
         Or a response, with the Responses API:\n\n  \
         curl -N http://{listen}/v1/responses \\\n    \
         -H 'Content-Type: application/json' \\\n    \
         -d '{{\"model\":\"mock-1\",\"stream\":true,\"input\":\"Hello\"}}'\n\n\
         Press Ctrl-C to stop (open streams get up to {drain}).\n",
        drain = humantime::format_duration(drain_timeout),
    )
}

/// What the terminal is told on the first SIGTERM or SIGINT, whatever the log format: a drain
/// is otherwise a silent wait of up to `drain_timeout`.
fn drain_notice(streams: usize, drain_timeout: Duration) -> String {
    let streams = match streams {
        1 => "1 stream".to_owned(),
        n => format!("{n} streams"),
    };
    format!(
        "tidegate: shutting down: {streams} draining, for at most {} (shutdown.drain_timeout); \
         press Ctrl-C again to quit at once",
        humantime::format_duration(drain_timeout)
    )
}

/// First SIGTERM or SIGINT: graceful drain, said on stderr. A second one: exit at once.
/// `signals` is created once, before the first signal, so a second signal that arrives while the
/// first is being handled is not lost.
async fn watch_signals(
    mut signals: Signals,
    shutdown: CancellationToken,
    live_streams: LiveStreams,
    drain_timeout: Duration,
) {
    signals.recv().await;
    let streams = live_streams.count();
    tracing::info!(
        streams,
        "signal received: draining (send it again to exit at once)"
    );
    eprintln!("{}", drain_notice(streams, drain_timeout));
    shutdown.cancel();
    signals.recv().await;
    tracing::warn!("second signal: exiting now");
    eprintln!("tidegate: second signal: quitting now");
    std::process::exit(130);
}

/// Each SIGHUP reloads the API keys file ([`Keys::reload`] logs the outcome; a bad file keeps
/// the keys in use) and the TLS certificate ([`ServerTls::reload`], likewise). With neither
/// there is nothing to reload, and the signal is only logged (its default action would have
/// ended the process).
async fn reload_on_hangup(
    mut hangups: Hangups,
    keys: Option<Arc<Keys>>,
    tls: Option<Arc<ServerTls>>,
) {
    // Bounded: ends with the process.
    loop {
        hangups.recv().await;
        if keys.is_none() && tls.is_none() {
            tracing::info!(r#"SIGHUP: nothing to reload (auth.mode is "none", no [tls])"#);
            continue;
        }
        let (keys, tls) = (keys.clone(), tls.clone());
        // Reading files: off the async workers.
        let _ = tokio::task::spawn_blocking(move || {
            if let Some(keys) = keys {
                let _ = keys.reload();
            }
            if let Some(tls) = tls {
                let _ = tls.reload();
            }
        })
        .await;
    }
}

async fn run_mock(listen: SocketAddr, settings: MockSettings) -> ExitCode {
    let listener = match bind(listen, DEFAULT_LISTEN_BACKLOG, "mock upstream") {
        Ok(l) => l,
        Err(code) => return code,
    };
    let addr = listener.local_addr().unwrap_or(listen);
    // Handlers first, then the line that tells a script the mock is up.
    let mut signals = Signals::new();
    println!("tidegate mock upstream on http://{addr}/v1 (stats: http://{addr}/stats)");
    let stop = CancellationToken::new();
    let signal_stop = stop.clone();
    tokio::spawn(async move {
        signals.recv().await;
        signal_stop.cancel();
    });
    match MockUpstream::new(settings).serve(listener, stop).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tidegate: mock upstream failed: {e}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_drain_notice_says_how_many_streams_how_long_and_how_to_quit() {
        let one = drain_notice(1, DEMO_DRAIN_TIMEOUT);
        assert!(one.contains("1 stream draining"), "{one}");
        assert!(one.contains("at most 5s"), "{one}");
        assert!(one.contains("Ctrl-C again"), "{one}");
        let none = drain_notice(0, Duration::from_secs(30));
        assert!(
            none.contains("0 streams draining, for at most 30s"),
            "{none}"
        );
    }

    #[test]
    fn the_demo_banner_names_the_pid_and_the_admin_url() {
        let text = demo_banner_text(&DemoBanner {
            listen: "127.0.0.1:8080".parse().unwrap(),
            admin: Some("127.0.0.1:40123".parse().unwrap()),
            mock: "http://127.0.0.1:40000/v1",
            pid: 4242,
            drain_timeout: DEMO_DRAIN_TIMEOUT,
        });
        assert!(text.contains("Process id: 4242"), "{text}");
        assert!(text.contains("--pid tidegate=4242"), "{text}");
        assert!(text.contains("Admin API: http://127.0.0.1:40123"), "{text}");
        assert!(text.contains("curl -N http://127.0.0.1:8080/v1/chat/completions"));
        assert!(text.contains("up to 5s"), "{text}");
    }

    #[test]
    fn the_demo_drains_briefly_and_always_has_an_admin_listener() {
        let cli = Cli::parse_from(["tidegate"]);
        let mut config = Config::default();
        apply_overrides(&mut config, &cli, true).unwrap();
        assert_eq!(config.shutdown.drain_timeout, DEMO_DRAIN_TIMEOUT);
        assert_eq!(config.admin.listen, Some(DEMO_ADMIN_LISTEN));
        assert!(config.validate().is_ok());

        let cli = Cli::parse_from(["tidegate", "--admin-listen", "127.0.0.1:9999"]);
        let mut config = Config::default();
        apply_overrides(&mut config, &cli, true).unwrap();
        assert_eq!(config.admin.listen, Some("127.0.0.1:9999".parse().unwrap()));

        // Serving a real upstream keeps the production drain and no admin listener.
        let cli = Cli::parse_from(["tidegate", "--upstream", "http://127.0.0.1:9/v1"]);
        let mut config = Config::default();
        apply_overrides(&mut config, &cli, false).unwrap();
        assert_eq!(
            config.shutdown.drain_timeout,
            Config::default().shutdown.drain_timeout
        );
        assert_eq!(config.admin.listen, None);
    }
}
