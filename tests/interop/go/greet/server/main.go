// Command server is a grpc-go implementation of greet_service.GreetService that
// behaves like the Go greeter demo described in shared/CONTRACT.md. The interop
// matrix runs it against our Rust client, and the benchmarks use it as the
// grpc-go baseline server, so the call paths log nothing unless -v is given.
//
// Usage:
//
//	server [-addr :8080] [-interval 2s] [-v]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"google.golang.org/grpc"

	pb "greet.local/interop/internal/greetpb"
)

var (
	addr     = flag.String("addr", ":8080", "address to listen on (host:port; port 0 picks a free port)")
	interval = flag.Duration("interval", 2*time.Second, "wait after each server-streaming send (0 for none)")
	verbose  = flag.Bool("v", false, "log every received name")
)

// drainTimeout bounds how long a stop signal waits for calls in flight
// before the server closes them.
const drainTimeout = 5 * time.Second

// greetServer implements GreetService. It holds no mutable state.
type greetServer struct {
	pb.UnimplementedGreetServiceServer
	interval time.Duration
	verbose  bool
}

func (s *greetServer) logName(name string) {
	if s.verbose {
		log.Printf("Got request with name : %s", name)
	}
}

// SayHello answers "Hello"; the request carries no name.
func (s *greetServer) SayHello(context.Context, *pb.NoParam) (*pb.HelloResponse, error) {
	return &pb.HelloResponse{Message: "Hello"}, nil
}

// SayHelloServerStreaming sends "Hello <name>" for each name in order, waiting
// s.interval after each send as the demo does. A failed send, or the caller
// going away during the wait, ends the call.
func (s *greetServer) SayHelloServerStreaming(req *pb.NamesList, stream grpc.ServerStreamingServer[pb.HelloResponse]) error {
	ctx := stream.Context()
	for _, name := range req.GetNames() {
		s.logName(name)
		if err := stream.Send(&pb.HelloResponse{Message: "Hello " + name}); err != nil {
			return err
		}
		if s.interval <= 0 {
			continue
		}
		timer := time.NewTimer(s.interval)
		select {
		case <-ctx.Done():
			timer.Stop()
			return ctx.Err()
		case <-timer.C:
		}
	}
	return nil
}

// SayHelloClientStreaming collects "Hello <name>" for every request in arrival
// order and answers them all once the client closes its side.
func (s *greetServer) SayHelloClientStreaming(stream grpc.ClientStreamingServer[pb.HelloRequest, pb.MessagesList]) error {
	var messages []string
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return stream.SendAndClose(&pb.MessagesList{Messages: messages})
		}
		if err != nil {
			return err
		}
		s.logName(req.GetName())
		messages = append(messages, "Hello "+req.GetName())
	}
}

// SayHelloBidirectionalStreaming answers each request with "Hello <name>" as
// soon as it arrives, and ends when the client closes its side.
func (s *greetServer) SayHelloBidirectionalStreaming(stream grpc.BidiStreamingServer[pb.HelloRequest, pb.HelloResponse]) error {
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		s.logName(req.GetName())
		if err := stream.Send(&pb.HelloResponse{Message: "Hello " + req.GetName()}); err != nil {
			return err
		}
	}
}

func main() {
	flag.Parse()
	if *interval < 0 {
		fmt.Fprintln(os.Stderr, "error: -interval must not be negative")
		os.Exit(2)
	}
	lis, err := net.Listen("tcp", *addr)
	if err != nil {
		fmt.Fprintf(os.Stderr, "error: listen on %s: %v\n", *addr, err)
		os.Exit(1)
	}
	srv := grpc.NewServer()
	pb.RegisterGreetServiceServer(srv, &greetServer{interval: *interval, verbose: *verbose})

	// Drain on SIGINT/SIGTERM, then force-close whatever is still running
	// after drainTimeout so that a stop never hangs.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-sigs
		stopped := make(chan struct{})
		go func() {
			srv.GracefulStop()
			close(stopped)
		}()
		select {
		case <-stopped:
		case <-time.After(drainTimeout):
			srv.Stop()
		}
	}()

	log.Printf("Server started at %s", lis.Addr())
	if err := srv.Serve(lis); err != nil {
		fmt.Fprintf(os.Stderr, "error: serve: %v\n", err)
		os.Exit(1)
	}
}
