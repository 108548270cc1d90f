// Command reader reads one PredictStream the way LocalAI core's Go client does: a new connection for
// the call, 50 MiB message limits, then a Recv loop that unmarshals each Reply and hands its message on.
//
// It takes the serialized PredictOptions on stdin (so it needs no generated code: the messages cross as
// bytes and only Reply's message and tokens fields are read) and prints one JSON line:
// {"replies": N, "tokens": last Reply.tokens, "seconds": dial to end of stream, "first": seconds to the
// first message}.
//
// Build: GOPATH=/usr/share/gocode GO111MODULE=off go build (Debian's golang-go and golang-google-grpc-dev).
package main

import (
	"context"
	"encoding/json"
	"errors"
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

// reply reads Reply.message (field 1, bytes) and Reply.tokens (field 2, varint): core's own unmarshal
// touches every field; these two are what it uses while streaming.
func reply(b []byte) (message []byte, tokens uint64, err error) {
	for len(b) > 0 {
		key, n := uvarint(b)
		if n <= 0 {
			return nil, 0, errors.New("bad key")
		}
		b = b[n:]
		switch key & 7 {
		case 0:
			v, m := uvarint(b)
			if m <= 0 {
				return nil, 0, errors.New("bad varint")
			}
			if key>>3 == 2 {
				tokens = v
			}
			b = b[m:]
		case 1:
			b = b[8:]
		case 5:
			b = b[4:]
		case 2:
			size, m := uvarint(b)
			if m <= 0 || uint64(len(b)-m) < size {
				return nil, 0, errors.New("bad length")
			}
			if key>>3 == 1 {
				message = b[m : m+int(size)]
			}
			b = b[m+int(size):]
		default:
			return nil, 0, fmt.Errorf("wire type %d", key&7)
		}
	}
	return message, tokens, nil
}

func uvarint(b []byte) (uint64, int) {
	var v uint64
	for i, c := range b {
		if i == 10 {
			return 0, -1
		}
		v |= uint64(c&0x7f) << (7 * uint(i))
		if c < 0x80 {
			return v, i + 1
		}
	}
	return 0, 0
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: reader HOST:PORT < request.bin")
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
	desc := &grpc.StreamDesc{StreamName: "PredictStream", ServerStreams: true}
	stream, err := conn.NewStream(ctx, desc, "/backend.Backend/PredictStream", grpc.ForceCodec(raw{}))
	if err != nil {
		panic(err)
	}
	if err := stream.SendMsg(&request); err != nil {
		panic(err)
	}
	if err := stream.CloseSend(); err != nil {
		panic(err)
	}
	var first time.Duration
	var replies int
	var tokens uint64
	var text []byte
	for {
		var b []byte
		err := stream.RecvMsg(&b)
		if err == io.EOF {
			break
		}
		if err != nil {
			panic(err)
		}
		message, n, err := reply(b)
		if err != nil {
			panic(err)
		}
		if first == 0 && len(message) > 0 {
			first = time.Since(started)
		}
		text = append(text, message...) // what core's callback does with it
		tokens = n
		replies++
	}
	elapsed := time.Since(started)
	out, _ := json.Marshal(map[string]interface{}{
		"replies": replies, "tokens": tokens, "seconds": elapsed.Seconds(), "first": first.Seconds(),
		"bytes": len(text),
	})
	fmt.Println(string(out))
}
