// cpp-peer --addr HOST:PORT [--threads N] [--request-slots N]: the `cpp`
// column of bench/run.py, the floor of the stack this project chose. It serves
// the benchmark's methods (helloworld.Greeter/SayHello and
// greet_service.GreetService SayHello, SayHelloServerStreaming and
// SayHelloBidirectionalStreaming) with our server's answers, headers included
// (`x-served-by: HOST:PORT`, the bound address, as our server sends by
// default on every call), on gRPC's C++
// async generic API over the same C core as grpcio (1.56.2, built by build.sh
// from the source grpcio-sys bundles): N completion queues, one thread each,
// no protobuf library (the three messages, all `string` fields numbered 1, are
// encoded by hand).
//
// It is set up as our server is, so the comparison is of the code around the
// core and not of settings: no core message-size filter (the 4 MiB receive
// limit is checked here, as src/codec.rs does it), at most 1,000 streams per
// connection, request slots pre-requested per queue as grpcio does (256, our
// default), server-streamed answers buffer-hinted but the last. Each call is a
// state machine driven from its queue's thread; a call's operations all
// complete on that one queue, so nothing here is shared between threads but
// the server and the service.
#include <grpc/grpc.h>
#include <grpc/slice.h>
#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/grpcpp.h>

#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace {

constexpr size_t kMaxReceiveBytes = 4 * 1024 * 1024;
constexpr int kMaxConcurrentStreams = 1000;

// The `x-served-by` header every call's answer carries, as our server's do
// (src/rpc: the instance id, by default the bound address). Set once in main
// before any call is served.
std::string served_by;

// ----------------------------------------------------------------- wire format

bool ReadVarint(std::string_view& in, uint64_t* out) {
  uint64_t value = 0;
  for (int shift = 0; shift < 64 && !in.empty(); shift += 7) {
    uint8_t byte = static_cast<uint8_t>(in.front());
    in.remove_prefix(1);
    value |= static_cast<uint64_t>(byte & 0x7f) << shift;
    if ((byte & 0x80) == 0) {
      *out = value;
      return true;
    }
  }
  return false;
}

// Proto3 `string` fields must hold UTF-8, as protobuf's own parsers check.
bool IsUtf8(std::string_view s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const auto* end = p + s.size();
  while (p < end) {
    if (end - p >= 8) {
      uint64_t word;
      std::memcpy(&word, p, 8);
      if ((word & 0x8080808080808080ull) == 0) {
        p += 8;
        continue;
      }
    }
    unsigned char c = *p;
    if (c < 0x80) {
      ++p;
      continue;
    }
    int len;
    uint32_t cp;
    if ((c & 0xe0) == 0xc0) {
      len = 2;
      cp = c & 0x1f;
    } else if ((c & 0xf0) == 0xe0) {
      len = 3;
      cp = c & 0x0f;
    } else if ((c & 0xf8) == 0xf0) {
      len = 4;
      cp = c & 0x07;
    } else {
      return false;
    }
    if (end - p < len) return false;
    for (int i = 1; i < len; ++i) {
      if ((p[i] & 0xc0) != 0x80) return false;
      cp = (cp << 6) | (p[i] & 0x3f);
    }
    static constexpr uint32_t kMin[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < kMin[len] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return false;
    p += len;
  }
  return true;
}

// Calls on_name for every field 1 (a `string`) of a message whose other
// fields are skipped; false if the message is malformed.
template <typename F>
bool ForEachField1(std::string_view in, F on_name) {
  while (!in.empty()) {
    uint64_t key, len;
    if (!ReadVarint(in, &key) || (key >> 3) == 0) return false;
    switch (key & 7) {
      case 0:
        if (!ReadVarint(in, &len)) return false;
        break;
      case 1:
      case 5: {
        size_t width = (key & 7) == 1 ? 8 : 4;
        if (in.size() < width) return false;
        in.remove_prefix(width);
        break;
      }
      case 2: {
        if (!ReadVarint(in, &len) || len > in.size()) return false;
        std::string_view value = in.substr(0, len);
        in.remove_prefix(len);
        if ((key >> 3) == 1) {
          if (!IsUtf8(value)) return false;
          on_name(value);
        }
        break;
      }
      default:
        return false;
    }
  }
  return true;
}

// A HelloReply / HelloResponse: {1: "<prefix><name>"}, encoded straight into
// the slice that is sent.
grpc::ByteBuffer Reply(std::string_view prefix, std::string_view name) {
  size_t text = prefix.size() + name.size();
  uint8_t head[11];
  size_t head_len = 0;
  head[head_len++] = 0x0a;
  for (uint64_t v = text;; v >>= 7) {
    head[head_len++] = static_cast<uint8_t>((v & 0x7f) | (v > 0x7f ? 0x80 : 0));
    if (v <= 0x7f) break;
  }
  grpc_slice slice = grpc_slice_malloc(head_len + text);
  uint8_t* out = GRPC_SLICE_START_PTR(slice);
  std::memcpy(out, head, head_len);
  std::memcpy(out + head_len, prefix.data(), prefix.size());
  std::memcpy(out + head_len + prefix.size(), name.data(), name.size());
  grpc::Slice owned(slice, grpc::Slice::STEAL_REF);
  return grpc::ByteBuffer(&owned, 1);
}

// The bytes of a received message: a view of its one slice when it has one,
// else a copy into `storage`.
std::string_view Bytes(grpc::ByteBuffer& buffer, std::vector<grpc::Slice>& slices, std::string& storage) {
  slices.clear();
  if (!buffer.Dump(&slices).ok()) return {};
  if (slices.size() == 1) {
    return {reinterpret_cast<const char*>(slices[0].begin()), slices[0].size()};
  }
  storage.clear();
  for (const auto& s : slices) storage.append(reinterpret_cast<const char*>(s.begin()), s.size());
  return storage;
}

// ----------------------------------------------------------------------- calls

enum class Method { kUnknown, kHelloWorld, kGreetHello, kServerStream, kBidi };

Method MethodOf(const std::string& path) {
  if (path == "/helloworld.Greeter/SayHello") return Method::kHelloWorld;
  if (path == "/greet_service.GreetService/SayHello") return Method::kGreetHello;
  if (path == "/greet_service.GreetService/SayHelloServerStreaming") return Method::kServerStream;
  if (path == "/greet_service.GreetService/SayHelloBidirectionalStreaming") return Method::kBidi;
  return Method::kUnknown;
}

class Call;

// A completion-queue tag: which call, and which of its operations completed.
struct Op {
  enum Kind { kRequest, kRead, kWrite, kFinish } kind;
  Call* call;
};

// One call, from being requested to its last completion. Every operation in
// flight holds a count; the call deletes itself when the count drops to zero.
class Call {
 public:
  Call(grpc::AsyncGenericService* service, grpc::ServerCompletionQueue* cq)
      : service_(service), cq_(cq), stream_(&ctx_) {
    in_flight_ = 1;
    service_->RequestCall(&ctx_, &stream_, cq_, cq_, &request_op_);
  }

  void Done(Op::Kind kind, bool ok) {
    --in_flight_;
    switch (kind) {
      case Op::kRequest:
        OnRequested(ok);
        break;
      case Op::kRead:
        OnRead(ok);
        break;
      case Op::kWrite:
        OnWritten(ok);
        break;
      case Op::kFinish:
        break;
    }
    if (in_flight_ == 0) delete this;
  }

 private:
  void OnRequested(bool ok) {
    if (!ok) return;  // the server is shutting down
    new Call(service_, cq_);  // the next call on this queue
    method_ = MethodOf(ctx_.method());
    if (method_ == Method::kUnknown) {
      Finish(grpc::Status(grpc::StatusCode::UNIMPLEMENTED, "unknown method " + ctx_.method()));
      return;
    }
    ctx_.AddInitialMetadata("x-served-by", served_by);
    StartRead();
  }

  void OnRead(bool ok) {
    if (failed_) return;
    if (method_ == Method::kBidi) {
      if (!ok) {  // the client closed its side
        reads_done_ = true;
        if (!writing_) Finish(grpc::Status::OK);
        return;
      }
      std::string_view name;
      if (!Decode(&name)) return;
      answers_.push_back(Reply("Hello ", name));
      if (!writing_) WriteNext();
      StartRead();
      return;
    }
    if (!ok) {
      Finish(grpc::Status(grpc::StatusCode::INTERNAL, "no request message"));
      return;
    }
    if (method_ == Method::kServerStream) {
      std::string_view bytes;
      if (!Received(&bytes)) return;
      std::vector<std::string_view> names;
      if (!ForEachField1(bytes, [&](std::string_view n) { names.push_back(n); })) {
        Finish(grpc::Status(grpc::StatusCode::INTERNAL, "cannot parse NamesList"));
        return;
      }
      for (auto n : names) answers_.push_back(Reply("Hello ", n));
      if (answers_.empty()) {
        Finish(grpc::Status::OK);
      } else {
        WriteNext();
      }
      return;
    }
    std::string_view name;
    if (!Decode(&name)) return;
    ++in_flight_;
    // A unary answer and its status go in one batch.
    stream_.WriteAndFinish(method_ == Method::kHelloWorld ? Reply("Hello ", name) : Reply("Hello", ""),
                           grpc::WriteOptions(), grpc::Status::OK, &finish_op_);
  }

  void OnWritten(bool ok) {
    writing_ = false;
    if (!ok) {  // the client went away: end the call's other operation too
      failed_ = true;
      ctx_.TryCancel();
      return;
    }
    if (failed_) {  // a request failed while this answer was being written
      Finish(fail_status_);
      return;
    }
    answers_.pop_front();
    if (!answers_.empty()) {
      WriteNext();
    } else if (reads_done_) {
      Finish(grpc::Status::OK);
    }
  }

  // Writes the answer at the front of the queue. Server streaming hints all
  // but its first and last answers as buffered, like our server (grpcio too
  // sends the first, which carries the initial metadata, unhinted: a hinted
  // first write is never flushed), so the core coalesces them, and sends the
  // last one with the status in one batch.
  void WriteNext() {
    ++in_flight_;
    if (method_ == Method::kServerStream) {
      if (answers_.size() == 1) {
        stream_.WriteAndFinish(answers_.front(), grpc::WriteOptions(), grpc::Status::OK, &finish_op_);
        return;
      }
      writing_ = true;
      grpc::WriteOptions options;
      if (wrote_first_) options.set_buffer_hint();
      wrote_first_ = true;
      stream_.Write(answers_.front(), options, &write_op_);
      return;
    }
    writing_ = true;
    stream_.Write(answers_.front(), grpc::WriteOptions(), &write_op_);
  }

  void StartRead() {
    ++in_flight_;
    stream_.Read(&request_, &read_op_);
  }

  void Finish(const grpc::Status& status) {
    ++in_flight_;
    stream_.Finish(status, &finish_op_);
  }

  // The received message's bytes, or a finished call if it is over the limit.
  bool Received(std::string_view* bytes) {
    if (request_.Length() > kMaxReceiveBytes) {
      Fail(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, "received message larger than max (" +
                                                                  std::to_string(request_.Length()) + " vs. " +
                                                                  std::to_string(kMaxReceiveBytes) + ")"));
      return false;
    }
    *bytes = Bytes(request_, slices_, storage_);
    return true;
  }

  // A HelloRequest's name (a NoParam has none), or a finished call.
  bool Decode(std::string_view* name) {
    std::string_view bytes;
    if (!Received(&bytes)) return false;
    *name = {};
    if (!ForEachField1(bytes, [&](std::string_view n) { *name = n; })) {
      Fail(grpc::Status(grpc::StatusCode::INTERNAL, "cannot parse request"));
      return false;
    }
    return true;
  }

  // Ends a call with an error status; a bidi call that has a write in flight
  // sends it when that write completes (one write at a time).
  void Fail(const grpc::Status& status) {
    failed_ = true;
    if (writing_) {
      fail_status_ = status;
    } else {
      Finish(status);
    }
  }

  grpc::AsyncGenericService* service_;
  grpc::ServerCompletionQueue* cq_;
  grpc::GenericServerContext ctx_;
  grpc::GenericServerAsyncReaderWriter stream_;
  Method method_ = Method::kUnknown;
  grpc::ByteBuffer request_;
  std::vector<grpc::Slice> slices_;
  std::string storage_;
  std::deque<grpc::ByteBuffer> answers_;  // answers not yet written; the front is being written
  bool writing_ = false;
  bool reads_done_ = false;
  bool wrote_first_ = false;
  bool failed_ = false;
  grpc::Status fail_status_;
  int in_flight_ = 0;
  Op request_op_{Op::kRequest, this};
  Op read_op_{Op::kRead, this};
  Op write_op_{Op::kWrite, this};
  Op finish_op_{Op::kFinish, this};
};

void Serve(grpc::AsyncGenericService* service, grpc::ServerCompletionQueue* cq, int slots) {
  for (int i = 0; i < slots; ++i) new Call(service, cq);
  void* tag;
  bool ok;
  while (cq->Next(&tag, &ok)) {
    auto* op = static_cast<Op*>(tag);
    op->call->Done(op->kind, ok);
  }
}

[[noreturn]] void Usage(const std::string& problem) {
  std::fprintf(stderr, "cpp-peer: %s (usage: cpp-peer --addr HOST:PORT [--threads N] [--request-slots N])\n",
               problem.c_str());
  std::exit(2);
}

int PositiveInt(const char* flag, const char* text) {
  char* end = nullptr;
  long value = std::strtol(text, &end, 10);
  if (*text == '\0' || *end != '\0' || value < 1 || value > 4096) {
    Usage(std::string(flag) + ": want a whole number from 1 to 4096, got \"" + text + "\"");
  }
  return static_cast<int>(value);
}

}  // namespace

int main(int argc, char** argv) {
  std::string addr;
  int threads = 1;
  int slots = 256;
  for (int i = 1; i < argc; ++i) {
    std::string flag = argv[i];
    if (i + 1 >= argc) Usage(flag == "--addr" || flag == "--threads" || flag == "--request-slots"
                                 ? flag + " needs a value"
                                 : "unknown argument " + flag);
    const char* value = argv[++i];
    if (flag == "--addr") {
      addr = value;
    } else if (flag == "--threads") {
      threads = PositiveInt("--threads", value);
    } else if (flag == "--request-slots") {
      slots = PositiveInt("--request-slots", value);
    } else {
      Usage("unknown argument " + flag);
    }
  }
  if (addr.empty()) Usage("--addr is required");

  // SIGTERM and SIGINT are taken by sigwait below, in no thread's handler.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  grpc::AsyncGenericService service;
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(addr, grpc::InsecureServerCredentials(), &port);
  builder.RegisterAsyncGenericService(&service);
  builder.SetMaxReceiveMessageSize(-1);  // no size filter in the stack; checked in Call::Received
  builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS, kMaxConcurrentStreams);
  std::vector<std::unique_ptr<grpc::ServerCompletionQueue>> cqs;
  for (int i = 0; i < threads; ++i) cqs.push_back(builder.AddCompletionQueue());
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (!server || port == 0) {
    std::fprintf(stderr, "cpp-peer: cannot listen on %s\n", addr.c_str());
    return 1;
  }
  served_by = addr.substr(0, addr.rfind(':')) + ":" + std::to_string(port);

  std::vector<std::thread> pollers;
  for (auto& cq : cqs) pollers.emplace_back(Serve, &service, cq.get(), slots);
  int signal_number = 0;
  sigwait(&stop_signals, &signal_number);
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  for (auto& cq : cqs) cq->Shutdown();
  for (auto& t : pollers) t.join();
  return 0;
}
