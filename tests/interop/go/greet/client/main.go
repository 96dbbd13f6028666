// Command client is a grpc-go client of greet_service.GreetService that calls
// the four methods as the Go greeter demo does (shared/CONTRACT.md). It prints
// exactly one line per message it receives (for SayHelloClientStreaming, one
// line per entry of the MessagesList) to stdout, and on failure one line
// "error: <CODE>: <message>" to stderr and exits 1.
//
// Usage:
//
//	client [-addr localhost:8080] [-mode unary|server-stream|client-stream|bidi|all]
//	       [-names Akhil,Alice,Bob] [-interval 2s] [-timeout 10s]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	pb "greet.local/interop/internal/greetpb"
)

var (
	addr     = flag.String("addr", "localhost:8080", "server address (host:port), plaintext")
	mode     = flag.String("mode", "all", "call pattern: unary, server-stream, client-stream, bidi or all")
	names    = flag.String("names", "Akhil,Alice,Bob", "comma-separated names to greet")
	interval = flag.Duration("interval", 2*time.Second, "wait between client-streaming and bidi sends (0 for none)")
	timeout  = flag.Duration("timeout", 10*time.Second, "deadline of each call")
)

// codeNames spells status codes the way the gRPC spec and our Rust client do.
var codeNames = map[codes.Code]string{
	codes.OK: "OK", codes.Canceled: "CANCELLED", codes.Unknown: "UNKNOWN",
	codes.InvalidArgument: "INVALID_ARGUMENT", codes.DeadlineExceeded: "DEADLINE_EXCEEDED",
	codes.NotFound: "NOT_FOUND", codes.AlreadyExists: "ALREADY_EXISTS",
	codes.PermissionDenied: "PERMISSION_DENIED", codes.ResourceExhausted: "RESOURCE_EXHAUSTED",
	codes.FailedPrecondition: "FAILED_PRECONDITION", codes.Aborted: "ABORTED",
	codes.OutOfRange: "OUT_OF_RANGE", codes.Unimplemented: "UNIMPLEMENTED",
	codes.Internal: "INTERNAL", codes.Unavailable: "UNAVAILABLE", codes.DataLoss: "DATA_LOSS",
	codes.Unauthenticated: "UNAUTHENTICATED",
}

// greetClient runs the call patterns over one channel.
type greetClient struct {
	client   pb.GreetServiceClient
	names    []string
	interval time.Duration
	timeout  time.Duration
}

// wait sleeps for the send interval, or until ctx ends.
func (c *greetClient) wait(ctx context.Context) error {
	if c.interval <= 0 {
		return nil
	}
	timer := time.NewTimer(c.interval)
	defer timer.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-timer.C:
		return nil
	}
}

// unary calls SayHello and prints its message.
func (c *greetClient) unary(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	res, err := c.client.SayHello(ctx, &pb.NoParam{})
	if err != nil {
		return err
	}
	fmt.Println(res.GetMessage())
	return nil
}

// serverStream sends every name in one NamesList and prints each response.
func (c *greetClient) serverStream(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	stream, err := c.client.SayHelloServerStreaming(ctx, &pb.NamesList{Names: c.names})
	if err != nil {
		return err
	}
	for {
		res, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		fmt.Println(res.GetMessage())
	}
}

// clientStream sends one HelloRequest per name, c.interval apart, then prints
// every entry of the MessagesList the server answers with.
func (c *greetClient) clientStream(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	stream, err := c.client.SayHelloClientStreaming(ctx)
	if err != nil {
		return err
	}
	for i, name := range c.names {
		if i > 0 {
			if err := c.wait(ctx); err != nil {
				return err
			}
		}
		if err := stream.Send(&pb.HelloRequest{Name: name}); err != nil {
			// The status that ended the call is reported by CloseAndRecv.
			break
		}
	}
	res, err := stream.CloseAndRecv()
	if err != nil {
		return err
	}
	for _, m := range res.GetMessages() {
		fmt.Println(m)
	}
	return nil
}

// bidi sends one HelloRequest per name, c.interval apart, while a second
// goroutine prints each response as it arrives.
func (c *greetClient) bidi(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	stream, err := c.client.SayHelloBidirectionalStreaming(ctx)
	if err != nil {
		return err
	}
	received := make(chan error, 1)
	go func() {
		for {
			res, err := stream.Recv()
			if errors.Is(err, io.EOF) {
				received <- nil
				return
			}
			if err != nil {
				received <- err
				return
			}
			fmt.Println(res.GetMessage())
		}
	}()
	for i, name := range c.names {
		if i > 0 {
			if err := c.wait(ctx); err != nil {
				break // the receiving half reports the deadline
			}
		}
		if err := stream.Send(&pb.HelloRequest{Name: name}); err != nil {
			break // the receiving half reports the status
		}
	}
	if err := stream.CloseSend(); err != nil {
		cancel()
	}
	return <-received
}

// fail prints err as one line and exits 1.
func fail(err error) {
	st := status.Convert(err)
	if errors.Is(err, context.DeadlineExceeded) {
		st = status.New(codes.DeadlineExceeded, err.Error())
	}
	name, ok := codeNames[st.Code()]
	if !ok {
		name = st.Code().String()
	}
	msg := strings.ReplaceAll(st.Message(), "\n", " ")
	fmt.Fprintf(os.Stderr, "error: %s: %s\n", name, msg)
	os.Exit(1)
}

func main() {
	flag.Parse()
	var nameList []string
	for _, n := range strings.Split(*names, ",") {
		if n = strings.TrimSpace(n); n != "" {
			nameList = append(nameList, n)
		}
	}
	if *timeout <= 0 || *interval < 0 {
		fmt.Fprintln(os.Stderr, "error: -timeout must be positive and -interval not negative")
		os.Exit(2)
	}
	conn, err := grpc.NewClient(*addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		fmt.Fprintf(os.Stderr, "error: %v\n", err)
		os.Exit(2)
	}
	defer conn.Close()
	c := &greetClient{
		client:   pb.NewGreetServiceClient(conn),
		names:    nameList,
		interval: *interval,
		timeout:  *timeout,
	}
	calls := map[string]func(context.Context) error{
		"unary":         c.unary,
		"server-stream": c.serverStream,
		"client-stream": c.clientStream,
		"bidi":          c.bidi,
	}
	var run []func(context.Context) error
	if *mode == "all" {
		run = []func(context.Context) error{c.unary, c.serverStream, c.clientStream, c.bidi}
	} else if call, ok := calls[*mode]; ok {
		run = append(run, call)
	} else {
		fmt.Fprintf(os.Stderr, "error: unknown -mode %q (want unary, server-stream, client-stream, bidi or all)\n", *mode)
		os.Exit(2)
	}
	for _, call := range run {
		if err := call(context.Background()); err != nil {
			conn.Close()
			fail(err)
		}
	}
}
