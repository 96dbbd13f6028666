// Command controlplane is a minimal xDS control plane for proxyless gRPC
// clients of greet, on github.com/envoyproxy/go-control-plane: it serves one
// Listener (an API listener, for the target xds:///NAME), its
// RouteConfiguration, one EDS Cluster (round robin) and its endpoints over
// ADS. The endpoints ("HOST:PORT,HOST:PORT,...") are read from
// -endpoints-file at start and again on each SIGHUP, each time as a new
// snapshot version, so a test can add and remove replicas. It logs (stderr)
// "version N: ENDPOINTS" after each snapshot is set, then, once serving,
// "listening on HOST:PORT".
package main

import (
	"context"
	"flag"
	"log"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpoint "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	router "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:0", "where the control plane listens")
	name := flag.String("name", "greet", "the service name clients dial as xds:///NAME (the Listener's name)")
	nodeID := flag.String("node", "greet-client", "the node id of the clients' bootstrap")
	endpointsFile := flag.String("endpoints-file", "", "a file holding the replicas, HOST:PORT,HOST:PORT,... (reread on SIGHUP)")
	flag.Parse()
	log.SetFlags(0)

	ctx := context.Background()
	snapshots := cache.NewSnapshotCache(true, cache.IDHash{}, nil)
	version := 0
	set := func() {
		text, err := os.ReadFile(*endpointsFile)
		if err != nil {
			log.Fatalf("endpoints: %v", err)
		}
		list := strings.TrimSpace(string(text))
		version++
		snap, err := snapshot(*name, strconv.Itoa(version), list)
		if err != nil {
			log.Fatalf("snapshot %d: %v", version, err)
		}
		if err := snapshots.SetSnapshot(ctx, *nodeID, snap); err != nil {
			log.Fatalf("set snapshot %d: %v", version, err)
		}
		log.Printf("version %d: %s", version, list)
	}
	set()
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
			set()
		}
	}()
	if err := g.Serve(lis); err != nil {
		log.Fatalf("serve: %v", err)
	}
}

func snapshot(name, version, list string) (*cache.Snapshot, error) {
	clusterName := name + "-cluster"
	routeName := name + "-route"

	var lbs []*endpoint.LbEndpoint
	for _, hp := range strings.Split(list, ",") {
		if hp == "" {
			continue
		}
		host, portText, err := net.SplitHostPort(hp)
		if err != nil {
			return nil, err
		}
		port, err := strconv.Atoi(portText)
		if err != nil {
			return nil, err
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
	cla := &endpoint.ClusterLoadAssignment{
		ClusterName: clusterName,
		Endpoints: []*endpoint.LocalityLbEndpoints{{
			Locality:            &core.Locality{Region: "local"},
			LbEndpoints:         lbs,
			LoadBalancingWeight: wrapperspb.UInt32(1),
		}},
	}
	ads := &core.ConfigSource{ConfigSourceSpecifier: &core.ConfigSource_Ads{Ads: &core.AggregatedConfigSource{}}, ResourceApiVersion: core.ApiVersion_V3}
	cl := &cluster.Cluster{
		Name:                 clusterName,
		ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_EDS},
		EdsClusterConfig:     &cluster.Cluster_EdsClusterConfig{EdsConfig: ads},
		LbPolicy:             cluster.Cluster_ROUND_ROBIN,
	}
	rc := &route.RouteConfiguration{
		Name: routeName,
		VirtualHosts: []*route.VirtualHost{{
			Name:    name,
			Domains: []string{"*"},
			Routes: []*route.Route{{
				Match:  &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/"}},
				Action: &route.Route_Route{Route: &route.RouteAction{ClusterSpecifier: &route.RouteAction_Cluster{Cluster: clusterName}}},
			}},
		}},
	}
	routerConfig, err := anypb.New(&router.Router{})
	if err != nil {
		return nil, err
	}
	manager, err := anypb.New(&hcm.HttpConnectionManager{
		RouteSpecifier: &hcm.HttpConnectionManager_Rds{Rds: &hcm.Rds{ConfigSource: ads, RouteConfigName: routeName}},
		HttpFilters: []*hcm.HttpFilter{{
			Name:       "envoy.filters.http.router",
			ConfigType: &hcm.HttpFilter_TypedConfig{TypedConfig: routerConfig},
		}},
	})
	if err != nil {
		return nil, err
	}
	l := &listener.Listener{Name: name, ApiListener: &listener.ApiListener{ApiListener: manager}}
	return cache.NewSnapshot(version, map[resource.Type][]types.Resource{
		resource.ClusterType:  {cl},
		resource.RouteType:    {rc},
		resource.ListenerType: {l},
		resource.EndpointType: {cla},
	})
}
