// A Node server for liveswap's command mode: it serves the public socket liveswap passes as fd 3
// (LISTEN_FDS) with server.listen({fd: 3}), and the private health socket (named liveswap-health in
// LISTEN_FDNAMES, the last of LISTEN_FDS) the same way, so liveswap can check it before the old
// generation drains. On SIGTERM it closes both servers gracefully (server.close()).
//
// Each answer says the version (the first word of $LIVESWAP_TEST_STATE) and the pid that served
// it; a POST answers the length and sha256 of the body it read.
//
//   liveswap run --bind 127.0.0.1:8000 -- node server.js
"use strict";

const crypto = require("crypto");
const fs = require("fs");
const http = require("http");

const version = (fs.readFileSync(process.env.LIVESWAP_TEST_STATE, "utf8").trim().split(/\s+/)[0]) || "?";

function handler(req, res) {
  const headers = { "Content-Type": "text/plain", "X-App-Version": version, "X-Worker-Pid": String(process.pid) };
  if (req.method === "POST") {
    const hash = crypto.createHash("sha256");
    let size = 0;
    req.on("data", (chunk) => {
      hash.update(chunk);
      size += chunk.length;
    });
    req.on("end", () => {
      res.writeHead(200, headers);
      res.end(`len=${size} sha256=${hash.digest("hex")} version=${version}\n`);
    });
    return;
  }
  res.writeHead(200, headers);
  res.end(`version=${version} pid=${process.pid}\n`);
}

if (process.env.LISTEN_PID !== String(process.pid)) {
  console.error(`LISTEN_PID=${process.env.LISTEN_PID} is not our pid ${process.pid}: no sockets were passed to us`);
  process.exit(1);
}
const count = Number(process.env.LISTEN_FDS || 0);
const names = (process.env.LISTEN_FDNAMES || "").split(":");
const fds = [3]; // the public socket: the first of LISTEN_FDS
const health = names.indexOf("liveswap-health");
if (health > 0 && health < count) {
  fds.push(3 + health);
}
const servers = fds.map((fd) => http.createServer(handler).listen({ fd }));
console.error(`node-server[${process.pid}] serving version ${version} on fds ${fds.join(", ")}`);

process.on("SIGTERM", () => {
  for (const server of servers) {
    server.close();
  }
});
