// Creates a blob container on Azurite (or any account, given its key), signed with Shared Key:
//
//   node create-container.js http://127.0.0.1:PORT/devstoreaccount1 NAME [ACCOUNT_KEY]
//
// The key defaults to Azurite's well-known devstoreaccount1 key. An existing container is not
// an error. object_store (which the archive uses) has no call that creates a container, so the
// test rig makes one here, with node's own crypto and http (no further npm package).
"use strict";
const crypto = require("node:crypto");
const http = require("node:http");

const WELL_KNOWN_KEY =
  "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
const [endpoint, name, key = WELL_KNOWN_KEY] = process.argv.slice(2);
if (!endpoint || !name) {
  console.error("usage: create-container.js ENDPOINT NAME [ACCOUNT_KEY]");
  process.exit(2);
}
const url = new URL(`${endpoint.replace(/\/$/, "")}/${name}?restype=container`);
const account = url.pathname.split("/")[1];
const date = new Date().toUTCString();
const version = "2021-08-06";
const toSign =
  "PUT" + "\n".repeat(12) +
  `x-ms-date:${date}\nx-ms-version:${version}\n` +
  `/${account}${url.pathname}\nrestype:container`;
const signature = crypto
  .createHmac("sha256", Buffer.from(key, "base64"))
  .update(toSign, "utf8")
  .digest("base64");
const req = http.request(
  url,
  {
    method: "PUT",
    headers: {
      "x-ms-date": date,
      "x-ms-version": version,
      "Content-Length": "0",
      Authorization: `SharedKey ${account}:${signature}`,
    },
    timeout: 10000,
  },
  (res) => {
    res.resume();
    if (res.statusCode === 201 || res.statusCode === 409) {
      process.exit(0);
    }
    console.error(`create-container: ${name}: HTTP ${res.statusCode} ${res.headers["x-ms-error-code"] || ""}`);
    process.exit(1);
  },
);
req.on("timeout", () => req.destroy(new Error("timed out")));
req.on("error", (e) => {
  console.error(`create-container: ${e.message}`);
  process.exit(1);
});
req.end();
