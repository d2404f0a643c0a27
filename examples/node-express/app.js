// express-sticky-cluster's usage example (Express 4 + express-session + passport +
// socket.io), as one runnable worker for sticky-cluster:
//
//   sticky-cluster --workers 4 --proxy-port 8080 -- node examples/node-express/app.js
//
// Sessions live in express-session's default MemoryStore, that is, in this one process
// only: a logged-in client must come back to the worker that logged it in, or it is
// logged out (401) and its socket.io connection is refused. sticky-cluster keeps it there.
//
// Each worker listens on 127.0.0.1:$PORT (HOST overrides the address) and says which
// worker it is ($WORKER_ID) in every answer.
'use strict';

const http = require('http');
const express = require('express');
const session = require('express-session');
const passport = require('passport');
const LocalStrategy = require('passport-local').Strategy;
const { Server } = require('socket.io');

const PORT = Number(process.env.PORT || 3000);
const HOST = process.env.HOST || '127.0.0.1';
const WORKER = process.env.WORKER_ID === undefined ? null : Number(process.env.WORKER_ID);

// passport: any username and password are accepted, as in the seed example; the user
// object itself is what goes into the session.
passport.use(
  new LocalStrategy({ usernameField: 'username', passwordField: 'password' }, (username, _password, done) =>
    done(null, { username }),
  ),
);
passport.serializeUser((user, done) => done(null, user));
passport.deserializeUser((user, done) => done(null, user));

// No `store`: the default MemoryStore, one per process.
const sessionMiddleware = session({
  name: 'connect.sid',
  secret: 'keyboard-cat',
  resave: false,
  saveUninitialized: false,
  cookie: { path: '/', httpOnly: true, maxAge: 60 * 60 * 1000 },
});

const app = express();
app.use(express.urlencoded({ extended: false }));
app.use(express.json());
app.use(sessionMiddleware);
app.use(passport.session());

const escape = (s) =>
  String(s).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]);

app.get('/', (req, res) => {
  const who = req.user
    ? `<p>Logged in as <b>${escape(req.user.username)}</b>. <a href="/me">/me</a></p>
<form method="post" action="/logout"><button>Log out</button></form>
<p><button id="echo">socket.io echo</button> <code id="out"></code></p>
<script src="/socket.io/socket.io.js"></script>
<script>
  const socket = io();
  const out = document.getElementById('out');
  socket.on('connect_error', (err) => { out.textContent = 'refused: ' + err.message; });
  document.getElementById('echo').onclick = () =>
    socket.emit('echo', Date.now(), (reply) => { out.textContent = JSON.stringify(reply); });
</script>`
    : `<form method="post" action="/login">
<input name="username" placeholder="username" required> <input name="password" type="password" placeholder="password (any)" required>
<button>Log in</button></form>`;
  res.type('html').send(`<!doctype html>
<title>sticky-cluster: express example</title>
<h1>Worker ${escape(WORKER)} (pid ${process.pid})</h1>
${who}
<p>Reload: the same worker answers every time. Its sessions live in its own memory only.</p>
`);
});

// Logs in and redirects to /me, or answers JSON to a client that prefers it.
app.post('/login', (req, res, next) => {
  passport.authenticate('local', (err, user, info) => {
    if (err) return next(err);
    const json = req.accepts(['html', 'json']) === 'json';
    if (!user) {
      const message = (info && info.message) || 'login failed';
      return json ? res.status(401).json({ error: message }) : res.redirect('/');
    }
    req.login(user, (loginErr) => {
      if (loginErr) return next(loginErr);
      return json ? res.json({ user: user.username, worker: WORKER }) : res.redirect('/me');
    });
  })(req, res, next);
});

app.post('/logout', (req, res, next) => {
  req.logout((err) => (err ? next(err) : res.redirect('/')));
});

app.get('/me', (req, res) => {
  if (!req.user) return res.status(401).json({ error: 'not logged in', worker: WORKER });
  res.json({ user: req.user.username, worker: WORKER });
});

const server = http.createServer(app);

// socket.io on the same server. The session middleware runs on socket.io's own HTTP
// requests too, and a connection is accepted only when its session holds a logged-in user
// (what passport.socketio did for the seed project).
const io = new Server(server);
io.engine.use(sessionMiddleware);
io.use((socket, next) => {
  const user = socket.request.session && socket.request.session.passport && socket.request.session.passport.user;
  if (!user) return next(new Error('unauthorized'));
  socket.data.user = user.username;
  next();
});
io.on('connection', (socket) => {
  socket.on('echo', (data, ack) => {
    if (typeof ack === 'function') ack({ user: socket.data.user, worker: WORKER, data });
  });
});

server.on('error', (err) => {
  console.error(`worker ${WORKER}: cannot listen on ${HOST}:${PORT}: ${err.message}`);
  process.exit(1);
});
server.listen(PORT, HOST, () => {
  console.log(`worker ${WORKER} listening on http://${HOST}:${PORT} (pid ${process.pid})`);
});
