// express-sticky-cluster's README example, ./worker.js. The seed elided parts of it ("...");
// they are filled in here (marked FILLED), and three of its slips fixed (marked FIXED).
var express = require('express'),
    session = require('express-session'),
    passport = require('passport'),
    path = require('path'), // FIXED: the seed used path without requiring it
    crypto = require('crypto'); // FIXED: node-uuid is deprecated; crypto.randomUUID is built in

var app = express();

var sessionFileStore = require('session-file-store')(session);
// ADDED: session hand-off on rolling restarts (sticky-cluster --drain-sessions); a no-op elsewhere.
global.sessionStore = require('@sticky-cluster/node/session').handoff(new sessionFileStore({
    path : path.join(__dirname, '/sessions'),
    logFn: function () {}
}), { secret: 'keyboard-cat' });
app.use(express.urlencoded({ extended: false })); // FILLED
require('./passport')(passport);
// FIXED: the session middleware comes before passport.session(), which reads the session.
app.use(session({
    secret: 'keyboard-cat',
    name: 'connect.sid',
    resave: true,
    rolling: true,
    saveUninitialized: true,
    cookie: {
        path: '/',
        httpOnly: false,
        secure: true,
        maxAge: 360000
    },
    store: global.sessionStore,
    genid: function (req) {
        return crypto.randomUUID();
    }
}));
app.use(passport.initialize());
app.use(passport.session());

// FILLED: log in (any username and password, as the seed's strategy accepts), and say who and
// which worker answers.
app.post('/login', passport.authenticate('local-signin'), function (req, res) {
    res.json({ loggedIn: true, worker: Number(process.env.WORKER_ID), pid: process.pid });
});
app.get('/me', function (req, res) {
    if (!req.isAuthenticated())
        return res.status(401).json({ error: 'not logged in', worker: Number(process.env.WORKER_ID), pid: process.pid });
    res.json({ sessionID: req.sessionID, worker: Number(process.env.WORKER_ID), pid: process.pid });
});
app.get('/', function (req, res) {
    res.type('html').send('<!doctype html><title>seed example</title><h1 id="worker">' + process.env.WORKER_ID + '</h1>' +
        '<script src="/socket.io/socket.io.js"></script>');
});

module.exports = app;
