-- wrk script: POST a 1 KiB body on keep-alive connections (wrk never retries a request).
wrk.method = "POST"
wrk.body = string.rep("x", 1024)
wrk.headers["Content-Type"] = "application/octet-stream"
