//! Run with
//!
//! ```sh
//! cargo run --release --example chat                                   # 4 workers, http://localhost:8080
//! cargo run --release --example chat -- --workers 2 --proxy-port 9090  # any sticky-cluster flag
//! ```
//!
//! A multi-worker chat: axum + tower-sessions (in-memory, so a session lives in one worker
//! only) + socketioxide, with sticky-cluster as master and worker in one program.
//!
//! Open the printed URL, log in with any name and password, and chat. The page says which
//! worker served it; a private window is another session, most likely on another worker, and
//! still sees every message: each worker delivers a message to its own sockets and broadcasts
//! it on the cluster's message bus, and every worker relays what the bus brings to its
//! sockets.
//!
//! Defaults: 4 workers and proxy port 8080 (set in code with the builder), overridden by a
//! `--config` file or by flags; every flag is the `sticky-cluster` binary's.
//!
//! HTTP contract:
//! - `GET /`: the login form (a logged-in session is sent on to `/chat`).
//! - `POST /login`, form fields `username` (1 to 40 characters after trimming) and `password`
//!   (anything): logs in, sets the session cookie `connect.sid` (the proxy's default session
//!   cookie, so the proxy pins it to this worker) and answers `303 See Other` to `/chat`.
//! - `GET /chat`: the chat page, naming the user and the worker that served it; `303` to `/`
//!   without a logged-in session.
//! - `GET /me`: `{"user":...,"worker":...,"pid":...}` with a logged-in session, `401` without.
//!
//! Sessions survive rolling restarts (`kill -HUP`) with `--drain-sessions`: the store is a
//! [`HandoffStore`], so a retiring worker process hands its sessions to its replacement.
//! - `POST /logout`: ends the session, `303` to `/`.
//! - socket.io on `/socket.io/`, namespace `/`: a connection whose `connect.sid` cookie names
//!   no logged-in session is refused (`connect_error`). A client emits `chat` with
//!   `{"text":...}`; every logged-in client on every worker receives `chat` with
//!   `{"user":...,"text":...,"worker":...}` (`worker`: the sender's worker).
//!
//! The page's socket.io client is a few lines of hand-written JavaScript speaking engine.io
//! v4 over a WebSocket only, so the example needs nothing from a CDN.

use std::process::ExitCode;

use axum::extract::{Form, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use socketioxide::extract::{Data, SocketRef};
use socketioxide::handler::ConnectHandler;
use socketioxide::SocketIo;
use sticky_cluster::sessions::HandoffStore;
use sticky_cluster::{Cluster, Error, Worker, WorkerBus, WorkerId};
use tower_sessions::cookie::time::Duration as CookieDuration;
use tower_sessions::cookie::SameSite;
use tower_sessions::session::Id;
use tower_sessions::{Expiry, MemoryStore, Session, SessionManagerLayer, SessionStore};

/// The session cookie: the proxy's default `--session-cookie`, so it needs no flag.
const SESSION_COOKIE: &str = "connect.sid";
/// The session field holding the user name.
const USER: &str = "user";
const DEFAULT_WORKERS: usize = 4;
const DEFAULT_PROXY_PORT: u16 = 8080;
const MAX_NAME: usize = 40;
const MAX_TEXT: usize = 2000;
const LOGIN_PAGE: &str = include_str!("chat/login.html");
const CHAT_PAGE: &str = include_str!("chat/chat.html");

fn main() -> ExitCode {
    init_logging();
    // Our defaults first; a --config file and the flags override them.
    let cluster = Cluster::builder()
        .workers(DEFAULT_WORKERS)
        .proxy_port(DEFAULT_PROXY_PORT)
        .with_args()
        .map(|c| {
            // Runs in the master for every message a worker sends it (here: each login).
            c.on_message(|worker, msg| {
                if let Some(user) = msg.get("login").and_then(|u| u.as_str()) {
                    tracing::info!("chat: {user:?} logged in on worker {worker}");
                }
            })
            .on_ready(|addr| {
                let host = match addr.ip() {
                    ip if ip.is_unspecified() => "localhost".to_string(),
                    std::net::IpAddr::V6(ip) => format!("[{ip}]"),
                    ip => ip.to_string(),
                };
                println!(
                    "chat: open http://{host}:{}/ (log in with any name and password)",
                    addr.port()
                );
            })
        });
    let result = cluster.and_then(|c| c.run(serve));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // --help and --version print to stdout.
        Err(Error::Usage(e)) if !e.use_stderr() => {
            print!("{e}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("chat: error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("STICKY_CLUSTER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}

/// What every handler of one worker shares.
#[derive(Clone)]
struct App {
    worker: WorkerId,
    store: HandoffStore<MemoryStore>,
    io: SocketIo,
    bus: Option<WorkerBus>,
}

/// The worker: one axum server with sessions and socket.io, relaying the bus to its sockets.
async fn serve(worker: Worker, port: u16) -> std::io::Result<()> {
    // Hands its sessions to the next process of this worker on a rolling restart.
    let store = HandoffStore::new(MemoryStore::default());
    if let Some(bus) = worker.bus() {
        tokio::spawn(store.clone().run(bus.clone()));
    }
    let sessions = SessionManagerLayer::new(store.clone())
        .with_name(SESSION_COOKIE)
        .with_secure(false)
        .with_same_site(SameSite::Lax)
        .with_expiry(Expiry::OnInactivity(CookieDuration::hours(1)));
    let (socketio, io) = SocketIo::new_layer();
    let app = App {
        worker: worker.id(),
        store,
        io: io.clone(),
        bus: worker.bus().cloned(),
    };
    io.ns(
        "/",
        {
            let app = app.clone();
            move |socket: SocketRef| on_connect(socket, app)
        }
        .with({
            let app = app.clone();
            move |socket: SocketRef| async move {
                match app.user_of(&socket).await {
                    Some(_) => Ok(()),
                    None => Err("not logged in: log in first"),
                }
            }
        }),
    );
    if let Some(bus) = app.bus.clone() {
        tokio::spawn(relay(bus, io.clone()));
    }

    let routes = Router::new()
        .route("/", get(index))
        .route("/login", post(login))
        .route("/chat", get(chat_page))
        .route("/me", get(me))
        .route("/logout", post(logout))
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .with_state(app)
        .layer(sessions)
        .layer(socketio);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    tracing::info!(
        worker = worker.id(),
        pid = worker.pid(),
        "chat worker on 127.0.0.1:{port}"
    );
    let stop = worker.shutdown_signal();
    axum::serve(listener, routes)
        .with_graceful_shutdown(async move {
            stop.await;
            io.close().await;
        })
        .await
}

/// Messages from the other workers go to this worker's sockets.
async fn relay(bus: WorkerBus, io: SocketIo) {
    while let Some(incoming) = bus.recv().await {
        if let Some(msg) = incoming.data.get("chat") {
            if let Err(e) = io.emit("chat", msg).await {
                tracing::warn!(error = %e, "cannot relay a chat message");
            }
        }
    }
}

/// A socket that passed the login check: its `chat` messages go to everyone.
async fn on_connect(socket: SocketRef, app: App) {
    let Some(user) = app.user_of(&socket).await else {
        // Logged out between the check and now.
        let _ = socket.disconnect();
        return;
    };
    socket.on("chat", move |Data(msg): Data<ChatIn>| async move {
        app.say(&user, &msg.text).await
    });
}

#[derive(Deserialize)]
struct ChatIn {
    text: String,
}

impl App {
    /// The logged-in user of the session named by the socket's `connect.sid` cookie.
    async fn user_of(&self, socket: &SocketRef) -> Option<String> {
        let id = socket
            .req_parts()
            .headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(name, _)| *name == SESSION_COOKIE)
            .and_then(|(_, value)| value.parse::<Id>().ok())?;
        let record = self.store.load(&id).await.ok()??;
        record.data.get(USER)?.as_str().map(str::to_string)
    }

    /// Delivers a message to this worker's sockets and, through the bus, to the others'.
    async fn say(&self, user: &str, text: &str) {
        let text: String = text.trim().chars().take(MAX_TEXT).collect();
        if text.is_empty() {
            return;
        }
        let msg = json!({"user": user, "text": text, "worker": self.worker});
        if let Some(bus) = &self.bus {
            bus.broadcast(json!({ "chat": msg }));
        }
        if let Err(e) = self.io.emit("chat", &msg).await {
            tracing::warn!(error = %e, "cannot deliver a chat message");
        }
    }
}

async fn current_user(session: &Session) -> Option<String> {
    session.get::<String>(USER).await.ok().flatten()
}

async fn index(session: Session) -> Response {
    match current_user(&session).await {
        Some(_) => Redirect::to("/chat").into_response(),
        None => Html(LOGIN_PAGE).into_response(),
    }
}

#[derive(Deserialize)]
struct LoginForm {
    username: String,
    /// Any password is accepted: this is a demo of sessions, not of authentication.
    #[allow(dead_code)]
    password: String,
}

async fn login(State(app): State<App>, session: Session, Form(form): Form<LoginForm>) -> Response {
    let name = form.username.trim();
    if name.is_empty() || name.chars().count() > MAX_NAME {
        let msg = format!("the user name must have 1 to {MAX_NAME} characters");
        return (StatusCode::BAD_REQUEST, msg).into_response();
    }
    // A new session id at login (no session fixation); the proxy learns it from Set-Cookie.
    let saved = match session.cycle_id().await {
        Ok(()) => session.insert(USER, name).await,
        Err(e) => Err(e),
    };
    match saved {
        Ok(()) => {
            // Tells the master (its `on_message` hook logs it).
            if let Some(bus) = &app.bus {
                bus.send(json!({ "login": name }));
            }
            Redirect::to("/chat").into_response()
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn chat_page(State(app): State<App>, session: Session) -> Response {
    let Some(user) = current_user(&session).await else {
        return Redirect::to("/").into_response();
    };
    // The user name last, so that a name can't smuggle in another placeholder.
    let page = CHAT_PAGE
        .replace("{{worker}}", &app.worker.to_string())
        .replace("{{pid}}", &std::process::id().to_string())
        .replace("{{user}}", &escape_html(&user));
    ([(header::CACHE_CONTROL, "no-store")], Html(page)).into_response()
}

async fn me(State(app): State<App>, session: Session) -> Response {
    match current_user(&session).await {
        Some(user) => (
            [(header::CACHE_CONTROL, "no-store")],
            Json(json!({"user": user, "worker": app.worker, "pid": std::process::id()})),
        )
            .into_response(),
        None => (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "not logged in"})),
        )
            .into_response(),
    }
}

async fn logout(State(app): State<App>, session: Session) -> Response {
    let id = session.id();
    if let Err(e) = session.flush().await {
        return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response();
    }
    // The proxy may forget this session key now rather than when its TTL runs out.
    if let (Some(bus), Some(id)) = (&app.bus, id) {
        bus.unbind(&id.to_string());
    }
    Redirect::to("/").into_response()
}

fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}
