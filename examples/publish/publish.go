// Publishing to ringcast from Go (standard library only).
//
// Unix socket: one JSON object per line, in order, never dropped; keep the
// connection open and write a line per message. UDP: one datagram per
// message, cheapest, may be dropped under overload.
//
//	go run publish.go unix ./ringcast.sock prices '{"EURUSD": 1.0842}'
//	go run publish.go udp 127.0.0.1:9000 prices '{"EURUSD": 1.0842}'
package main

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
)

func main() {
	transport, where, channel, data := os.Args[1], os.Args[2], os.Args[3], os.Args[4]
	network := "udp"
	if transport == "unix" {
		network = "unix"
	}
	line, err := json.Marshal(map[string]any{"channel": channel, "data": json.RawMessage(data)})
	if err == nil {
		var feed net.Conn
		if feed, err = net.Dial(network, where); err == nil {
			_, err = feed.Write(append(line, '\n'))
			feed.Close()
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
