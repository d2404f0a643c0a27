// express-sticky-cluster's README example, ./socket.io.js, as the seed wrote it.
var passportIo = require('passport.socketio'),
    cookieParser = require('cookie-parser');

module.exports = function (io) {
    io.use(passportIo.authorize({
        cookieParser: cookieParser,
        key: 'connect.sid',
        secret: 'keyboard-cat',
        store: global.sessionStore,
        success: function (data, accept) {
            accept();
        },
        fail: function (data, message, err, accept) {
            if(err)
                accept(new Error(message));
        }
    }));
    io.on('connection', function (socket) {
        socket.on('join', function (data) {
            console.log('join', data);
        });
        socket.on('disconnect', function () {
            socket.leave();
        });
    });
};
