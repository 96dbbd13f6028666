// Command controlplane is a minimal xDS control plane for proxyless gRPC
// clients of greet, on github.com/envoyproxy/go-control-plane: it serves one
// Listener (an API listener, for the target xds:///NAME), its
// RouteConfiguration, EDS Clusters (round robin) and their endpoints over
// ADS.
//
// The endpoints are read from -endpoints-file at start and again on each
// SIGHUP, each time as a new snapshot version, so a test can add and remove
// replicas. Each line of the file is one cluster's replicas,
// "HOST:PORT,HOST:PORT,...". Without -weights the file holds one line and
// the route sends every call to that cluster (NAME-cluster); with
// -weights W1,W2,... it holds one line per weight and the route splits calls
// over the clusters NAME-cluster-1, NAME-cluster-2, ... by those weights.
// With -abort-percent P the listener's HTTP filters begin with a fault
// filter that fails P% of calls with UNAVAILABLE before they leave the
// client. With -retries N the route carries a retry policy: a call that
// fails with UNAVAILABLE is tried again up to N times (backoff from 50 ms).
//
// It logs (stderr) "version N: ENDPOINTS" after each snapshot is set, then,
// once serving, "listening on HOST:PORT". A file it cannot use at start is
// fatal; on SIGHUP it logs "version N rejected: WHY" and keeps the snapshot
// it serves.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	fault "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	router "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// config is what the flags say about the resources, beside the endpoints.
type config struct {
	name         string
	weights      []uint32 // nil: one cluster, no split
	abortPercent uint32   // 0: no fault filter
	retries      uint32   // 0: no retry policy on the route
}

func main() {
	addr := flag.String("addr", "127.0.0.1:0", "where the control plane listens")
	name := flag.String("name", "greet", "the service name clients dial as xds:///NAME (the Listener's name)")
	nodeID := flag.String("node", "greet-client", "the node id of the clients' bootstrap")
	endpointsFile := flag.String("endpoints-file", "", "a file holding one line of replicas per cluster, HOST:PORT,HOST:PORT,... (reread on SIGHUP)")
	weights := flag.String("weights", "", "W1,W2,...: one cluster per line of -endpoints-file, calls split by these weights (e.g. 80,20)")
	abortPercent := flag.Uint("abort-percent", 0, "fail this percentage of calls (0-100) with UNAVAILABLE by an HTTP fault filter in the client")
	retries := flag.Uint("retries", 0, "the route retries a call that failed with UNAVAILABLE this many times (0-10; 0: no retry policy)")
	flag.Parse()
	log.SetFlags(0)

	if *endpointsFile == "" {
		log.Fatal("-endpoints-file is required")
	}
	cfg := config{name: *name}
	if *weights != "" {
		w, err := parseWeights(*weights)
		if err != nil {
			log.Fatalf("-weights %q: %v", *weights, err)
		}
		cfg.weights = w
	}
	if *abortPercent > 100 {
		log.Fatalf("-abort-percent %d: must be between 0 and 100", *abortPercent)
	}
	cfg.abortPercent = uint32(*abortPercent)
	if *retries > 10 {
		log.Fatalf("-retries %d: must be between 0 and 10", *retries)
	}
	cfg.retries = uint32(*retries)

	ctx := context.Background()
	snapshots := cache.NewSnapshotCache(true, cache.IDHash{}, nil)
	version := 0
	set := func() error {
		text, err := os.ReadFile(*endpointsFile)
		if err != nil {
			return fmt.Errorf("endpoints: %v", err)
		}
		lines := strings.Split(strings.TrimSpace(string(text)), "\n")
		snap, err := snapshot(cfg, strconv.Itoa(version+1), lines)
		if err != nil {
			return err
		}
		if err := snapshots.SetSnapshot(ctx, *nodeID, snap); err != nil {
			return err
		}
		version++
		log.Printf("version %d: %s", version, strings.Join(lines, " | "))
		return nil
	}
	if err := set(); err != nil {
		log.Fatalf("%s: %v", *endpointsFile, err)
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)

	lis, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatalf("listen %s: %v", *addr, err)
	}
	g := grpc.NewServer()
	discovery.RegisterAggregatedDiscoveryServiceServer(g, server.NewServer(ctx, snapshots, nil))
	log.Printf("listening on %s", lis.Addr())
	go func() {
		for range hup {
			if err := set(); err != nil {
				log.Printf("version %d rejected: %v", version+1, err)
			}
		}
	}()
	if err := g.Serve(lis); err != nil {
		log.Fatalf("serve: %v", err)
	}
}

// parseWeights reads "W1,W2,...": at least two weights, each a positive integer.
func parseWeights(text string) ([]uint32, error) {
	var weights []uint32
	var total uint64
	for _, field := range strings.Split(text, ",") {
		w, err := strconv.ParseUint(strings.TrimSpace(field), 10, 32)
		if err != nil || w == 0 {
			return nil, fmt.Errorf("%q is not a positive integer", field)
		}
		weights = append(weights, uint32(w))
		total += w
	}
	if len(weights) < 2 {
		return nil, errors.New("a split needs at least two weights")
	}
	if total > 1<<32-1 {
		return nil, errors.New("the weights add up to more than 2^32-1")
	}
	return weights, nil
}

// parseEndpoints reads "HOST:PORT,HOST:PORT,..." (empty: no replica).
func parseEndpoints(list string) ([]*endpoint.LbEndpoint, error) {
	var lbs []*endpoint.LbEndpoint
	for _, hp := range strings.Split(list, ",") {
		hp = strings.TrimSpace(hp)
		if hp == "" {
			continue
		}
		host, portText, err := net.SplitHostPort(hp)
		if err != nil {
			return nil, err
		}
		port, err := strconv.ParseUint(portText, 10, 16)
		if err != nil || port == 0 {
			return nil, fmt.Errorf("%q: the port must be a number from 1 to 65535", hp)
		}
		lbs = append(lbs, &endpoint.LbEndpoint{
			HostIdentifier: &endpoint.LbEndpoint_Endpoint{Endpoint: &endpoint.Endpoint{
				Address: &core.Address{Address: &core.Address_SocketAddress{SocketAddress: &core.SocketAddress{
					Address:       host,
					PortSpecifier: &core.SocketAddress_PortValue{PortValue: uint32(port)},
				}}},
			}},
			HealthStatus: core.HealthStatus_HEALTHY,
		})
	}
	return lbs, nil
}

// snapshot builds the resources for one version: lines holds one line of
// the endpoints file per cluster.
func snapshot(cfg config, version string, lines []string) (*cache.Snapshot, error) {
	name := cfg.name
	routeName := name + "-route"
	clusterNames := []string{name + "-cluster"}
	if cfg.weights != nil {
		if len(lines) != len(cfg.weights) {
			return nil, fmt.Errorf("%d line(s) of endpoints for %d weights: one line per cluster", len(lines), len(cfg.weights))
		}
		clusterNames = clusterNames[:0]
		for i := range cfg.weights {
			clusterNames = append(clusterNames, fmt.Sprintf("%s-cluster-%d", name, i+1))
		}
	} else if len(lines) != 1 {
		return nil, fmt.Errorf("%d lines of endpoints: without -weights the file holds one line", len(lines))
	}

	ads := &core.ConfigSource{ConfigSourceSpecifier: &core.ConfigSource_Ads{Ads: &core.AggregatedConfigSource{}}, ResourceApiVersion: core.ApiVersion_V3}
	var clusters, assignments []types.Resource
	for i, clusterName := range clusterNames {
		lbs, err := parseEndpoints(lines[i])
		if err != nil {
			return nil, fmt.Errorf("line %d: %v", i+1, err)
		}
		assignments = append(assignments, &endpoint.ClusterLoadAssignment{
			ClusterName: clusterName,
			Endpoints: []*endpoint.LocalityLbEndpoints{{
				Locality:            &core.Locality{Region: "local"},
				LbEndpoints:         lbs,
				LoadBalancingWeight: wrapperspb.UInt32(1),
			}},
		})
		clusters = append(clusters, &cluster.Cluster{
			Name:                 clusterName,
			ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_EDS},
			EdsClusterConfig:     &cluster.Cluster_EdsClusterConfig{EdsConfig: ads},
			LbPolicy:             cluster.Cluster_ROUND_ROBIN,
		})
	}

	action := &route.RouteAction{ClusterSpecifier: &route.RouteAction_Cluster{Cluster: clusterNames[0]}}
	if cfg.weights != nil {
		split := &route.WeightedCluster{}
		for i, w := range cfg.weights {
			split.Clusters = append(split.Clusters, &route.WeightedCluster_ClusterWeight{Name: clusterNames[i], Weight: wrapperspb.UInt32(w)})
		}
		action = &route.RouteAction{ClusterSpecifier: &route.RouteAction_WeightedClusters{WeightedClusters: split}}
	}
	if cfg.retries > 0 {
		action.RetryPolicy = &route.RetryPolicy{
			RetryOn:    "unavailable",
			NumRetries: wrapperspb.UInt32(cfg.retries),
			RetryBackOff: &route.RetryPolicy_RetryBackOff{
				BaseInterval: durationpb.New(50 * time.Millisecond),
				MaxInterval:  durationpb.New(500 * time.Millisecond),
			},
		}
	}
	rc := &route.RouteConfiguration{
		Name: routeName,
		VirtualHosts: []*route.VirtualHost{{
			Name:    name,
			Domains: []string{"*"},
			Routes: []*route.Route{{
				Match:  &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/"}},
				Action: &route.Route_Route{Route: action},
			}},
		}},
	}

	filters, err := httpFilters(cfg.abortPercent)
	if err != nil {
		return nil, err
	}
	manager, err := anypb.New(&hcm.HttpConnectionManager{
		RouteSpecifier: &hcm.HttpConnectionManager_Rds{Rds: &hcm.Rds{ConfigSource: ads, RouteConfigName: routeName}},
		HttpFilters:    filters,
	})
	if err != nil {
		return nil, err
	}
	l := &listener.Listener{Name: name, ApiListener: &listener.ApiListener{ApiListener: manager}}
	return cache.NewSnapshot(version, map[resource.Type][]types.Resource{
		resource.ClusterType:  clusters,
		resource.RouteType:    {rc},
		resource.ListenerType: {l},
		resource.EndpointType: assignments,
	})
}

// httpFilters: the fault filter when abortPercent > 0, then the router
// (which must come last).
func httpFilters(abortPercent uint32) ([]*hcm.HttpFilter, error) {
	var filters []*hcm.HttpFilter
	if abortPercent > 0 {
		faultConfig, err := anypb.New(&fault.HTTPFault{
			Abort: &fault.FaultAbort{
				ErrorType:  &fault.FaultAbort_GrpcStatus{GrpcStatus: uint32(codes.Unavailable)},
				Percentage: &typev3.FractionalPercent{Numerator: abortPercent, Denominator: typev3.FractionalPercent_HUNDRED},
			},
		})
		if err != nil {
			return nil, err
		}
		filters = append(filters, &hcm.HttpFilter{
			Name:       "envoy.filters.http.fault",
			ConfigType: &hcm.HttpFilter_TypedConfig{TypedConfig: faultConfig},
		})
	}
	routerConfig, err := anypb.New(&router.Router{})
	if err != nil {
		return nil, err
	}
	return append(filters, &hcm.HttpFilter{
		Name:       "envoy.filters.http.router",
		ConfigType: &hcm.HttpFilter_TypedConfig{TypedConfig: routerConfig},
	}), nil
}
