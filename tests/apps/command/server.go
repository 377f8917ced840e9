// A Go server for liveswap's command mode: its listener comes from LISTEN_FDS (fd 3, systemd's
// socket activation), it says READY=1 on $NOTIFY_SOCKET itself, and on SIGTERM it shuts down
// gracefully with http.Server.Shutdown.
//
// Each answer says the version (the first word of $LIVESWAP_TEST_STATE) and the pid that served
// it; a POST answers the length and sha256 of the body it read.
//
//	go build -o server server.go
//	liveswap run --bind 127.0.0.1:8000 -- ./server
package main

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
)

// listener takes the first socket passed by systemd's protocol: LISTEN_PID must be our pid.
func listener() net.Listener {
	if os.Getenv("LISTEN_PID") != strconv.Itoa(os.Getpid()) {
		log.Fatalf("LISTEN_PID=%q is not our pid %d: no sockets were passed to us", os.Getenv("LISTEN_PID"), os.Getpid())
	}
	if n, err := strconv.Atoi(os.Getenv("LISTEN_FDS")); err != nil || n < 1 {
		log.Fatalf("LISTEN_FDS=%q: no sockets were passed to us", os.Getenv("LISTEN_FDS"))
	}
	f := os.NewFile(3, "listen-fd-3")
	ln, err := net.FileListener(f)
	if err != nil {
		log.Fatalf("fd 3 is not a listening socket: %v", err)
	}
	// FileListener made its own copy: close ours, so that once Shutdown closes the listener this
	// process holds the socket no more (that is how liveswap sees that it stopped accepting).
	f.Close()
	return ln
}

// notify sends one message to the service manager, if there is one. An abstract socket's name
// starts with '@', which Go turns into the leading NUL byte of the address.
func notify(state string) {
	name := os.Getenv("NOTIFY_SOCKET")
	if name == "" {
		return
	}
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		log.Printf("cannot reach NOTIFY_SOCKET %q: %v", name, err)
		return
	}
	defer conn.Close()
	if _, err := conn.Write([]byte(state)); err != nil {
		log.Printf("cannot notify %q: %v", name, err)
	}
}

func main() {
	log.SetFlags(0)
	log.SetPrefix(fmt.Sprintf("go-server[%d] ", os.Getpid()))
	state, err := os.ReadFile(os.Getenv("LIVESWAP_TEST_STATE"))
	if err != nil {
		log.Fatal(err)
	}
	version := strings.Fields(string(state) + " ?")[0]
	pid := strconv.Itoa(os.Getpid())

	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		w.Header().Set("X-App-Version", version)
		w.Header().Set("X-Worker-Pid", pid)
		if r.Method == http.MethodPost {
			body, err := io.ReadAll(r.Body)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			fmt.Fprintf(w, "len=%d sha256=%x version=%s\n", len(body), sha256.Sum256(body), version)
			return
		}
		fmt.Fprintf(w, "version=%s pid=%s\n", version, pid)
	})
	srv := &http.Server{Handler: handler}

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	done := make(chan struct{})
	go func() {
		<-stop
		notify("STOPPING=1")
		if err := srv.Shutdown(context.Background()); err != nil {
			log.Printf("shutdown: %v", err)
		}
		close(done)
	}()

	ln := listener()
	notify("READY=1")
	log.Printf("serving version %s", version)
	if err := srv.Serve(ln); err != http.ErrServerClosed {
		log.Fatal(err)
	}
	<-done
}
