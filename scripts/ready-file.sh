# Sourced by the scripts that start a server with `--ready-file FILE`: the
# server writes FILE (JSON, renamed into place whole) once it serves:
#   {"admin":"HOST:PORT" or null,"grpc":"HOST:PORT"}

# Waits (up to 20 s) for ready file $1 while process $2 lives.
wait_ready() {
  local file=$1 pid=$2
  for _ in $(seq 400); do
    [ -e "$file" ] && return 0
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  [ -e "$file" ] && return 0
  echo "$(basename "$0"): no ready file $file from process $pid" >&2
  return 1
}

# The "$2" address (grpc or admin) in ready file $1; nothing if it is null.
ready_addr() {
  sed -n "s/.*\"$2\": *\"\([^\"]*\)\".*/\1/p" "$1"
}
