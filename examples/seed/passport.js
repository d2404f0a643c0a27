// express-sticky-cluster's README example, ./passport.js, as the seed wrote it.
var LocalStrategy = require('passport-local').Strategy;

module.exports = function (passport, licensing) {
    passport.serializeUser(function (user, done) {
        done(null, user);
    });
    passport.deserializeUser(function (user, done) {
        done(null, user);
    });
    passport.use(
        'local-signin',
        new LocalStrategy({
                usernameField: 'username',
                passwordField: 'password',
                passReqToCallback: true
            },
            function (req, username, password, done) {
                var objUser = {};
                return done(null, objUser, {message: 'Successfull login'});
            }
        )
    );
};
