package qemu

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/vmfest/vmfest/driver"
)

// FuzzQMPReply feeds arbitrary bytes to the QMP client as a server's
// greeting and replies: it must return a result or an error, never panic or
// hang past its context.
func FuzzQMPReply(f *testing.F) {
	for _, s := range []string{
		greeting + "\n{\"return\": {}}\n{\"return\": {\"status\": \"running\", \"running\": true}, \"id\": \"vmfest-2\"}\n",
		greeting + "\n{\"return\": {}}\n{\"error\": {\"class\": \"GenericError\", \"desc\": \"x\"}}\n",
		"{\"QMP\": 1}\n{\"return\": null}\n{\"event\": \"STOP\"}\n",
		"\xff\xfe\n\n",
		greeting + "\n{\"return\": {}, \"id\": 5}\n{\"id\": [1]}\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		client, server := net.Pipe()
		go func() {
			server.Write(data)
			server.Close()
		}()
		go func() { // drain what the client sends
			buf := make([]byte, 4096)
			for {
				if _, err := server.Read(buf); err != nil {
					return
				}
			}
		}()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
		defer cancel()
		c := &lineConn{conn: client}
		q := newQMP(c)
		if _, err := c.readLine(ctx, deadline(ctx)); err != nil {
			client.Close()
			return
		}
		q.Execute(ctx, "qmp_capabilities", nil)
		q.Execute(ctx, "query-status", nil)
		client.Close()
	})
}

// FuzzAgentReply: the guest-agent client survives arbitrary replies.
func FuzzAgentReply(f *testing.F) {
	for _, s := range []string{
		"\xff{\"return\": 1}\n{\"return\": [{\"name\": \"eth0\"}]}\n",
		"{\"error\": {\"class\": \"X\"}}\n",
		"\xff\xff\xff\n{\"return\": [{\"ip-addresses\": 5}]}\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		client, server := net.Pipe()
		go func() {
			server.Write(data)
			server.Close()
		}()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
		defer cancel()
		a := newAgent(&lineConn{conn: client})
		driver.Interfaces(ctx, a)
		client.Close()
	})
}
