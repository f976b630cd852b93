// bench/node_cluster_echo.js - Node's cluster module running a `net` echo
// server: the prefork peer a user would pick instead of sockfork (issue 13).
//
// usage: node bench/node_cluster_echo.js [PORT [WORKERS]]
//        (PORT 0 or nothing: any free port; WORKERS default 8)
//
// Listens on 127.0.0.1 only. Says "listening on 127.0.0.1:PORT" on stderr
// once every worker listens (in a cluster, listen(0) gives every worker the
// same port). A worker that dies is replaced, unless SIGTERM ended it. SIGTERM or SIGINT: the primary
// ends its workers and exits 0 when the last has exited; a worker whose
// primary is gone exits when its IPC channel closes (cluster does that).
//
// Scheduling is cluster's default (on Linux, round-robin: the primary accepts
// and hands each connection to a worker over IPC); NODE_CLUSTER_SCHED_POLICY=none
// makes the workers accept from the shared socket themselves.
'use strict';

const cluster = require('node:cluster');
const net = require('node:net');

const port = Number(process.argv[2] || 0);
const workers = Number(process.argv[3] || 8);

function primary() {
  if (!Number.isInteger(workers) || workers < 1 || !Number.isInteger(port)) {
    process.stderr.write('usage: node node_cluster_echo.js [PORT [WORKERS]]\n');
    process.exit(2);
  }
  let listening = 0;
  let stopping = false;

  cluster.on('listening', (worker, address) => {
    listening += 1;
    if (listening === workers) // once: replacements listen later too
      process.stderr.write(`listening on 127.0.0.1:${address.port}\n`);
  });
  cluster.on('exit', (worker, code, signal) => {
    // A worker ended by SIGTERM was stopped on purpose (bench/lib.sh's
    // stop_tree signals the whole tree at once): not replaced.
    if (!stopping && signal !== 'SIGTERM') {
      process.stderr.write(`worker ${worker.process.pid} exited (${signal || code}): replaced\n`);
      cluster.fork();
    } else if (Object.keys(cluster.workers).length === 0) {
      process.exit(0);
    }
  });

  const stop = () => {
    if (stopping)
      return;
    stopping = true;
    const left = Object.values(cluster.workers);
    if (left.length === 0)
      process.exit(0);
    for (const worker of left)
      worker.process.kill('SIGTERM');
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);

  for (let i = 0; i < workers; i++)
    cluster.fork();
}

function worker() {
  const server = net.createServer((sock) => {
    // A reset peer is an error event; unhandled, it would end the worker.
    sock.on('error', () => sock.destroy());
    sock.pipe(sock); // echo; ends our side when the peer's ends
  });
  server.listen(port, '127.0.0.1');
}

if (cluster.isPrimary)
  primary();
else
  worker();
