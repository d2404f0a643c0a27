// `require('@sticky-cluster/node/bus')`: the worker's message bus (same object as `.bus`).
'use strict';

module.exports = require('./lib/bus').bus;
