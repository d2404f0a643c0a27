// The seed's session stack for the drain tests: express, express-session's MemoryStore,
// passport (local strategy, any user). With HANDOFF=1 the store is wrapped with
// @sticky-cluster/node/session's handoff(), so a rolling restart hands sessions over.
// Modules come from examples/seed/node_modules (NODE_PATH).
'use strict';

const path = require('path');
const express = require('express');
const session = require('express-session');
const passport = require('passport');
const LocalStrategy = require('passport-local').Strategy;
const { handoff } = require(path.join(__dirname, '../../npm/packages/node/session'));

const SECRET = 'drain-test-secret';
passport.serializeUser((user, done) => done(null, user));
passport.deserializeUser((user, done) => done(null, user));
passport.use(new LocalStrategy((username, password, done) => done(null, { name: username })));

let store = new session.MemoryStore();
if (process.env.HANDOFF === '1') store = handoff(store, { secret: SECRET });

const app = express();
app.use(express.urlencoded({ extended: false }));
app.use(session({ secret: SECRET, resave: false, saveUninitialized: false, rolling: true, store }));
app.use(passport.initialize());
app.use(passport.session());

const me = (req) => ({ worker: Number(process.env.WORKER_ID), pid: process.pid, sticky: req.headers['x-sticky'] || null });
app.post('/login', passport.authenticate('local'), (req, res) => res.json({ user: req.user.name, ...me(req) }));
app.get('/me', (req, res) => {
  if (!req.isAuthenticated()) return res.status(401).json({ error: 'not logged in', ...me(req) });
  res.json({ user: req.user.name, ...me(req) });
});

const server = app.listen(Number(process.env.PORT), '127.0.0.1');
process.on('SIGTERM', () => server.close(() => process.exit(0)));
