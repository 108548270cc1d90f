// Command unary makes one unary call the way LocalAI core's Go client does (Detect, Embedding, TTS...):
// a new connection for the call, 50 MiB message limits, then Invoke.
//
// It takes the method ("/backend.Backend/Detect") as its second argument and the serialized request on
// stdin (so it needs no generated code: the messages cross as bytes), and prints one JSON line:
// {"seconds": dial to the whole reply read, "bytes": the reply's size}.
//
// Build: GOPATH=/usr/share/gocode GO111MODULE=off go build (Debian's golang-go and golang-google-grpc-dev).
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"time"

	"google.golang.org/grpc"
)

const maxMessage = 50 * 1024 * 1024 // core's send and receive caps

// raw passes messages through as bytes: the request was serialized by the caller.
type raw struct{}

func (raw) Marshal(v interface{}) ([]byte, error) { return *(v.(*[]byte)), nil }

func (raw) Unmarshal(data []byte, v interface{}) error {
	out := v.(*[]byte)
	*out = append((*out)[:0], data...)
	return nil
}

func (raw) Name() string { return "proto" }

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: unary HOST:PORT /backend.Backend/METHOD < request.bin")
		os.Exit(2)
	}
	request, err := io.ReadAll(os.Stdin)
	if err != nil {
		panic(err)
	}
	ctx := context.Background()
	started := time.Now()
	conn, err := grpc.DialContext(ctx, os.Args[1], grpc.WithInsecure(),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxMessage), grpc.MaxCallSendMsgSize(maxMessage)))
	if err != nil {
		panic(err)
	}
	defer conn.Close()
	var reply []byte
	if err := conn.Invoke(ctx, os.Args[2], &request, &reply, grpc.ForceCodec(raw{})); err != nil {
		panic(err)
	}
	elapsed := time.Since(started)
	out, _ := json.Marshal(map[string]interface{}{"seconds": elapsed.Seconds(), "bytes": len(reply)})
	fmt.Println(string(out))
}
