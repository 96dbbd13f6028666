// Command loadgen drives greet_service.GreetService for the benchmarks in
// bench/run.py. It is the same program against our server and grpc-go's, so
// whatever it costs, it costs both sides equally; run.py pins it to its own
// core and reports its CPU beside every figure.
//
// Modes (the first argument):
//
//	bidi           SayHelloBidirectionalStreaming on -streams streams over -conns
//	               connections, -window requests in flight per stream; counts echoes
//	               over -duration, or, with -messages N, sends exactly N requests per
//	               stream and measures until every answer is in (bench/costs.py
//	               counts instructions for a fixed amount of work that way).
//	server-stream  -calls SayHelloServerStreaming calls one after another, each
//	               with -names names; counts messages.
//	hold           opens -streams bidi streams over -conns connections, makes one
//	               round trip on each, prints "READY", and holds them open until
//	               stdin closes (run.py reads the server's memory meanwhile).
//
// -size N makes every name N bytes long (bidi's -name, or each server-stream
// name, padded with "x"), for the large-message rows; the result's "bytes" is
// the answers' message text received in the window, from which run.py gives MB/s.
//
// Protocol with run.py: a line "MEASURE_START" when the measured window opens,
// "MEASURE_END" when it closes, then one JSON object with the result. The
// generator's own CPU time over the window (getrusage) is in the JSON.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	pb "greet.local/bench/internal/greetpb"
)

var (
	addr     = flag.String("addr", "127.0.0.1:8080", "server address")
	conns    = flag.Int("conns", 1, "connections (bidi, hold)")
	streams  = flag.Int("streams", 1, "streams in total, spread round-robin over the connections (bidi, hold)")
	window   = flag.Int("window", 64, "requests in flight per bidi stream")
	warmup   = flag.Duration("warmup", time.Second, "load before the measured window opens (bidi)")
	duration = flag.Duration("duration", 5*time.Second, "measured window (bidi)")
	names    = flag.Int("names", 100000, "names in one server-streaming call")
	calls    = flag.Int("calls", 1, "server-streaming calls, one after another")
	name     = flag.String("name", "world", "name sent in bidi requests")
	messages = flag.Int("messages", 0, "bidi: requests per stream, then close (0: run for -duration)")
	size     = flag.Int("size", 0, "pad every name to this many bytes (0: as given)")
)

// padded is name, made -size bytes long when -size is set.
func padded(name string) string {
	if *size > len(name) {
		return name + strings.Repeat("x", *size-len(name))
	}
	return name
}

type result struct {
	Mode       string  `json:"mode"`
	Messages   int64   `json:"messages"`
	Bytes      int64   `json:"bytes"`
	Seconds    float64 `json:"seconds"`
	PerSecond  float64 `json:"per_second"`
	CPUSeconds float64 `json:"generator_cpu_seconds"`
	Errors     int64   `json:"errors"`
}

func cpuSeconds() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	tv := func(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }
	return tv(ru.Utime) + tv(ru.Stime)
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "loadgen: "+format+"\n", args...)
	os.Exit(1)
}

func dial(n int) []pb.GreetServiceClient {
	clients := make([]pb.GreetServiceClient, n)
	for i := range clients {
		// Each grpc.NewClient is its own HTTP/2 connection.
		cc, err := grpc.NewClient(*addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			fail("dial %s: %v", *addr, err)
		}
		clients[i] = pb.NewGreetServiceClient(cc)
	}
	return clients
}

// window measurement: start/end marks printed for run.py, CPU sampled at both.
type marks struct {
	start, end       time.Time
	cpuStart, cpuEnd float64
}

func (m *marks) open() {
	m.cpuStart = cpuSeconds()
	m.start = time.Now()
	fmt.Println("MEASURE_START")
}

func (m *marks) close() {
	m.end = time.Now()
	m.cpuEnd = cpuSeconds()
	fmt.Println("MEASURE_END")
}

func emit(r result) {
	out, _ := json.Marshal(r)
	fmt.Println(string(out))
}

// runBidi keeps -window requests in flight on each stream, so the server,
// not the round-trip time, sets the rate.
func runBidi() {
	clients := dial(*conns)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var received, errs atomic.Int64
	var stop atomic.Bool
	var wg sync.WaitGroup
	req := &pb.HelloRequest{Name: padded(*name)}
	want := "Hello " + req.Name
	ready := make(chan struct{}, *streams)
	for i := 0; i < *streams; i++ {
		stream, err := clients[i%len(clients)].SayHelloBidirectionalStreaming(ctx)
		if err != nil {
			fail("open stream: %v", err)
		}
		credits := make(chan struct{}, *window)
		wg.Add(2)
		go func() { // sender
			defer wg.Done()
			for sent := 0; !stop.Load() && (*messages == 0 || sent < *messages); sent++ {
				credits <- struct{}{}
				if err := stream.Send(req); err != nil {
					errs.Add(1)
					return
				}
			}
			_ = stream.CloseSend()
		}()
		go func() { // receiver
			defer wg.Done()
			first := true
			for {
				resp, err := stream.Recv()
				if errors.Is(err, io.EOF) {
					return
				}
				if err != nil {
					if !stop.Load() {
						errs.Add(1)
					}
					return
				}
				if resp.GetMessage() != want {
					errs.Add(1)
				}
				if first {
					ready <- struct{}{}
					first = false
				}
				received.Add(1)
				select {
				case <-credits:
				default:
				}
			}
		}()
	}
	for i := 0; i < *streams; i++ {
		<-ready
	}
	if *messages > 0 {
		// Fixed work: the window is the whole run, from the first answers to the last.
		var m marks
		m.open()
		wg.Wait()
		m.close()
		secs := m.end.Sub(m.start).Seconds()
		n := received.Load()
		emit(result{Mode: "bidi", Messages: n, Bytes: n * int64(len(want)), Seconds: secs, PerSecond: float64(n) / secs,
			CPUSeconds: m.cpuEnd - m.cpuStart, Errors: errs.Load() + int64(*streams**messages) - n})
		return
	}
	time.Sleep(*warmup)
	var m marks
	n0 := received.Load()
	m.open()
	time.Sleep(*duration)
	n1 := received.Load()
	m.close()
	stop.Store(true)
	// Senders blocked on credits are released by the receivers draining.
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		cancel()
	}
	secs := m.end.Sub(m.start).Seconds()
	emit(result{Mode: "bidi", Messages: n1 - n0, Bytes: (n1 - n0) * int64(len(want)), Seconds: secs,
		PerSecond: float64(n1-n0) / secs, CPUSeconds: m.cpuEnd - m.cpuStart, Errors: errs.Load()})
}

func runServerStream() {
	client := dial(1)[0]
	list := &pb.NamesList{Names: make([]string, *names)}
	for i := range list.Names {
		list.Names[i] = padded(fmt.Sprintf("name-%06d", i))
	}
	// One call first, unmeasured, so connection set-up and first-call costs stay out.
	var total, bytes, errs int64
	call := func() int64 {
		stream, err := client.SayHelloServerStreaming(context.Background(), list)
		if err != nil {
			fail("call: %v", err)
		}
		var n int64
		var last string
		for {
			resp, err := stream.Recv()
			if errors.Is(err, io.EOF) {
				// Count and the last message show every name came back, in order, at the end.
				if want := "Hello " + list.Names[len(list.Names)-1]; n > 0 && last != want {
					fail("last message %q, want %q", last, want)
				}
				return n
			}
			if err != nil {
				fail("recv after %d messages: %v", n, err)
			}
			last = resp.GetMessage()
			bytes += int64(len(last))
			n++
		}
	}
	if n := call(); n != int64(*names) {
		fail("warm-up call: %d messages, want %d", n, *names)
	}
	bytes = 0
	var m marks
	m.open()
	for i := 0; i < *calls; i++ {
		n := call()
		if n != int64(*names) {
			errs++
		}
		total += n
	}
	m.close()
	secs := m.end.Sub(m.start).Seconds()
	emit(result{Mode: "server-stream", Messages: total, Bytes: bytes, Seconds: secs, PerSecond: float64(total) / secs,
		CPUSeconds: m.cpuEnd - m.cpuStart, Errors: errs})
}

func runHold() {
	clients := dial(*conns)
	ctx, cancel := context.WithCancel(context.Background())
	held := make([]pb.GreetService_SayHelloBidirectionalStreamingClient, *streams)
	req := &pb.HelloRequest{Name: *name}
	for i := range held {
		stream, err := clients[i%len(clients)].SayHelloBidirectionalStreaming(ctx)
		if err != nil {
			fail("open stream %d: %v", i, err)
		}
		if err := stream.Send(req); err != nil {
			fail("send on stream %d: %v", i, err)
		}
		held[i] = stream
	}
	// Every stream answered once: the server holds all of them.
	for i, stream := range held {
		if _, err := stream.Recv(); err != nil {
			fail("recv on stream %d: %v", i, err)
		}
	}
	fmt.Println("READY")
	_, _ = io.Copy(io.Discard, os.Stdin)
	for _, stream := range held {
		_ = stream.CloseSend()
	}
	cancel()
	emit(result{Mode: "hold", Messages: int64(len(held)), CPUSeconds: cpuSeconds()})
}

func main() {
	if len(os.Args) < 2 {
		fail("usage: loadgen bidi|server-stream|hold [flags]")
	}
	mode := os.Args[1]
	if err := flag.CommandLine.Parse(os.Args[2:]); err != nil {
		os.Exit(2)
	}
	switch mode {
	case "bidi":
		runBidi()
	case "server-stream":
		runServerStream()
	case "hold":
		runHold()
	default:
		fail("unknown mode %q", mode)
	}
}
