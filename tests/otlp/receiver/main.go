// otlp-receiver: a collector's OTLP/HTTP traces endpoint and nothing else,
// for the tracing tests (tests/it/tracing.rs). It decodes each POST to
// /v1/traces as a real ExportTraceServiceRequest (go.opentelemetry.io/proto/otlp,
// the collector's own message types), appends one JSON line per span to -out,
// and answers an ExportTraceServiceResponse as a collector does.
//
// Once listening it writes its address to -ready (written to a temporary
// name, then renamed), so that a test waits on the file, not on a log line.
package main

import (
	"encoding/hex"
	"encoding/json"
	"flag"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"

	collectortrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	"google.golang.org/protobuf/proto"
)

// span is what a test reads of one span.
type span struct {
	TraceID      string            `json:"trace_id"`
	SpanID       string            `json:"span_id"`
	ParentSpanID string            `json:"parent_span_id"`
	Name         string            `json:"name"`
	Kind         string            `json:"kind"`
	Service      string            `json:"service"`
	StatusCode   string            `json:"status_code"`
	Attributes   map[string]string `json:"attributes"`
	Events       []string          `json:"events"`
}

func value(v *commonpb.AnyValue) string {
	switch x := v.GetValue().(type) {
	case *commonpb.AnyValue_StringValue:
		return x.StringValue
	case *commonpb.AnyValue_IntValue:
		return strconv.FormatInt(x.IntValue, 10)
	case *commonpb.AnyValue_BoolValue:
		return strconv.FormatBool(x.BoolValue)
	case *commonpb.AnyValue_DoubleValue:
		return strconv.FormatFloat(x.DoubleValue, 'g', -1, 64)
	default:
		return v.String()
	}
}

func attributes(kvs []*commonpb.KeyValue) map[string]string {
	out := make(map[string]string, len(kvs))
	for _, kv := range kvs {
		out[kv.GetKey()] = value(kv.GetValue())
	}
	return out
}

func main() {
	addr := flag.String("addr", "127.0.0.1:0", "where to listen")
	out := flag.String("out", "", "file to append one JSON line per span to")
	ready := flag.String("ready", "", "file to write the bound address to once listening")
	flag.Parse()
	if *out == "" || *ready == "" {
		log.Fatal("-out and -ready are required")
	}
	file, err := os.OpenFile(*out, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		log.Fatal(err)
	}
	var mu sync.Mutex // protects file
	http.HandleFunc("/v1/traces", func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			http.Error(w, "POST only", http.StatusMethodNotAllowed)
			return
		}
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		var request collectortrace.ExportTraceServiceRequest
		if err := proto.Unmarshal(body, &request); err != nil {
			http.Error(w, "not an ExportTraceServiceRequest: "+err.Error(), http.StatusBadRequest)
			return
		}
		var lines []byte
		for _, rs := range request.GetResourceSpans() {
			service := attributes(rs.GetResource().GetAttributes())["service.name"]
			for _, ss := range rs.GetScopeSpans() {
				for _, s := range ss.GetSpans() {
					events := []string{}
					for _, e := range s.GetEvents() {
						events = append(events, e.GetName())
					}
					line, _ := json.Marshal(span{
						TraceID:      hex.EncodeToString(s.GetTraceId()),
						SpanID:       hex.EncodeToString(s.GetSpanId()),
						ParentSpanID: hex.EncodeToString(s.GetParentSpanId()),
						Name:         s.GetName(),
						Kind:         s.GetKind().String(),
						Service:      service,
						StatusCode:   s.GetStatus().GetCode().String(),
						Attributes:   attributes(s.GetAttributes()),
						Events:       events,
					})
					lines = append(append(lines, line...), '\n')
				}
			}
		}
		mu.Lock()
		_, err = file.Write(lines)
		mu.Unlock()
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		answer, _ := proto.Marshal(&collectortrace.ExportTraceServiceResponse{})
		w.Header().Set("Content-Type", "application/x-protobuf")
		_, _ = w.Write(answer)
	})
	listener, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatal(err)
	}
	tmp := *ready + ".tmp"
	if err := os.WriteFile(tmp, []byte(listener.Addr().String()), 0o644); err != nil {
		log.Fatal(err)
	}
	if err := os.Rename(tmp, *ready); err != nil {
		log.Fatal(err)
	}
	log.Fatal(http.Serve(listener, nil))
}
