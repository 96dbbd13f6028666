// Command client is grpc-go's own xDS client against greet's replicas: it
// dials -target (xds:///greet) with the xDS resolver of
// google.golang.org/grpc/xds, the bootstrap named by GRPC_XDS_BOOTSTRAP,
// makes -calls helloworld.Greeter/SayHello calls (-concurrency at once) and
// prints one JSON line: {"calls", "ok", "failed", "codes", "instances"},
// where instances counts the calls each replica answered (its x-served-by
// response header). It exits 1 if any call failed.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"os"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	pb "google.golang.org/grpc/examples/helloworld/helloworld"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	_ "google.golang.org/grpc/xds" // registers the xds:/// resolver and the xDS balancers
)

type summary struct {
	Calls     int            `json:"calls"`
	OK        int            `json:"ok"`
	Failed    int            `json:"failed"`
	Codes     map[string]int `json:"codes"`
	Instances map[string]int `json:"instances"`
}

func main() {
	target := flag.String("target", "xds:///greet", "the xDS target to dial")
	calls := flag.Int("calls", 1000, "SayHello calls to make")
	concurrency := flag.Int("concurrency", 8, "calls in flight at once")
	timeout := flag.Duration("timeout", 10*time.Second, "deadline of each call")
	flag.Parse()
	log.SetFlags(0)
	if *calls < 1 || *concurrency < 1 {
		log.Fatal("-calls and -concurrency must be at least 1")
	}

	conn, err := grpc.NewClient(*target, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		log.Fatalf("dial %s: %v", *target, err)
	}
	defer conn.Close()
	greeter := pb.NewGreeterClient(conn)

	result := summary{Codes: map[string]int{}, Instances: map[string]int{}}
	var mu sync.Mutex
	next := make(chan int)
	var wg sync.WaitGroup
	for w := 0; w < *concurrency; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				ctx, cancel := context.WithTimeout(context.Background(), *timeout)
				var header metadata.MD
				_, err := greeter.SayHello(ctx, &pb.HelloRequest{Name: fmt.Sprintf("xds-%d", i)}, grpc.Header(&header))
				cancel()
				mu.Lock()
				result.Calls++
				result.Codes[status.Code(err).String()]++
				if err == nil {
					result.OK++
				} else {
					result.Failed++
				}
				if served := header.Get("x-served-by"); len(served) > 0 {
					result.Instances[served[0]]++
				}
				mu.Unlock()
			}
		}()
	}
	for i := 0; i < *calls; i++ {
		next <- i
	}
	close(next)
	wg.Wait()

	out, err := json.Marshal(result)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(string(out))
	if result.Failed > 0 {
		os.Exit(1)
	}
}
