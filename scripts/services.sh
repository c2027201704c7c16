#!/usr/bin/env bash
# Install, start, stop and inspect the real services that iotdata's integration tests use:
# Mosquitto 2.0 (MQTT), Apache Kafka 3.9 (KRaft, one node), a three-node Kafka 3.9 KRaft cluster
# (replication factor 3, min.insync.replicas 2) and PostgreSQL 15, all on 127.0.0.1.
#
#   scripts/services.sh up | down | status
#   scripts/services.sh start | stop | restart [mqtt|kafka|kafka-cluster|postgres ...]
#
# `up`/`start` install what is missing and start what is not running; both are safe to repeat
# (`start kafka-cluster` brings back, with its data, a node of the cluster that a test killed).
# State (data, pid files) lives in $IOTDATA_SERVICES_DIR (default <repo>/.services), every log in
# its logs/ folder, and the Kafka jars Maven fetched and the test CA of its TLS listeners in
# $IOTDATA_CACHE (default ~/.cache/iotdata).
# A service named by IOTDATA_MQTT_URL, IOTDATA_KAFKA_BOOTSTRAP, IOTDATA_KAFKA_CLUSTER_BOOTSTRAP or
# IOTDATA_POSTGRES_DSN is never started or stopped here: it is only checked to be reachable.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CONF="$REPO/scripts/services"
STATE=${IOTDATA_SERVICES_DIR:-$REPO/.services}
mkdir -p "$STATE/logs"
STATE=$(cd "$STATE" && pwd)
LOGS="$STATE/logs"
CACHE=${IOTDATA_CACHE:-$HOME/.cache/iotdata}

MQTT_URL=${IOTDATA_MQTT_URL:-mqtt://127.0.0.1:1883}
KAFKA_BOOTSTRAP=${IOTDATA_KAFKA_BOOTSTRAP:-127.0.0.1:9092}
POSTGRES_DSN=${IOTDATA_POSTGRES_DSN:-postgresql://iotdata:iotdata@127.0.0.1:5432/iotdata_test}

MQTT_PIDFILE="$STATE/mosquitto/mosquitto.pid"
MQTT_LOG="$LOGS/mosquitto.log"

# The Kafka version has one home: <kafka.version> in the pom.
KAFKA_VERSION=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$CONF/kafka/pom.xml")
KAFKA_LIBS="$CACHE/kafka-$KAFKA_VERSION/libs"
KAFKA_PIDFILE="$STATE/kafka/kafka.pid"
KAFKA_LOG="$LOGS/kafka.log"
# The test CA and certificates of Kafka's TLS listeners: one set per machine (in the cache, not
# in $STATE), so that tests of any checkout find those of a broker another checkout started.
KAFKA_TLS=${IOTDATA_KAFKA_TLS_DIR:-$CACHE/kafka-tls}

PG_VERSION=15
PG_CLUSTER=main
PG_LOG="$LOGS/postgres.log" # a link to the Debian cluster's own log file

# ---------------------------------------------------------------------------------------------
# Helpers

say() { printf 'services: %s\n' "$*"; }
die() {
	printf 'services: error: %s\n' "$*" >&2
	exit 1
}

# fail_with_logs MESSAGE LOGFILE...: report a failed start with the end of each log, then exit 1.
fail_with_logs() {
	local message=$1 log
	shift
	printf 'services: error: %s\n' "$message" >&2
	for log in "$@"; do
		[[ -s $log ]] || continue
		printf -- '--- last lines of %s ---\n' "$log" >&2
		tail -n 30 "$log" >&2
	done
	exit 1
}

# run_as_root COMMAND...: run a command as root (directly when we already are root).
run_as_root() {
	if [[ $(id -u) == 0 ]]; then "$@"; else sudo -- "$@"; fi
}

# tcp_open HOST PORT: succeeds when something accepts TCP connections there.
tcp_open() {
	# shellcheck disable=SC2016  # $1 and $2 are expanded by the inner bash
	timeout 2 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$1" "$2" 2>/dev/null
}

# host_port ADDRESS DEFAULT_PORT: "host port" of a URL or host:port (the first of a list).
host_port() {
	local hp=${1%%,*}
	hp=${hp#*://}
	hp=${hp##*@}
	hp=${hp%%/*}
	hp=${hp%%\?*}
	if [[ $hp == *:* ]]; then echo "${hp%:*} ${hp##*:}"; else echo "$hp $2"; fi
}

# reachable ADDRESS DEFAULT_PORT: TCP probe of a URL or host:port.
reachable() {
	# shellcheck disable=SC2046  # split "host port" into two arguments on purpose
	tcp_open $(host_port "$1" "$2")
}

# wait_until SECONDS COMMAND...: retry COMMAND every half second until it succeeds or time is up.
wait_until() {
	local deadline=$((SECONDS + $1))
	shift
	until "$@"; do
		((SECONDS < deadline)) || return 1
		sleep 0.5
	done
}

# pid_of PIDFILE PATTERN: print the pid in PIDFILE if that process runs and its command line
# contains PATTERN (so a stale pid file whose number was reused is never trusted).
pid_of() {
	local pid
	[[ -s $1 ]] || return 1
	pid=$(<"$1")
	[[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
	tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$2" || return 1
	echo "$pid"
}

pid_gone() { ! kill -0 "$1" 2>/dev/null; }

# elapsed START: the seconds since START (an $EPOCHREALTIME), to a tenth.
elapsed() { awk -v start="$1" -v now="$EPOCHREALTIME" 'BEGIN { printf "%.1f", now - start }'; }

# stop_pid NAME PIDFILE PATTERN SECONDS: SIGTERM, wait for the exit, SIGKILL after SECONDS.
stop_pid() {
	local name=$1 pidfile=$2 pattern=$3 pid
	if ! pid=$(pid_of "$pidfile" "$pattern"); then
		say "$name: nothing started from $STATE is running"
		rm -f "$pidfile"
		return 0
	fi
	say "stopping $name (pid $pid)"
	kill -TERM "$pid" 2>/dev/null || true
	if ! wait_until "$4" pid_gone "$pid"; then
		say "$name did not stop within $4 s; killing it"
		kill -KILL "$pid" 2>/dev/null || true
		wait_until 10 pid_gone "$pid" || die "could not stop $name (pid $pid)"
	fi
	rm -f "$pidfile"
}

# render TEMPLATE OUTPUT NAME=VALUE...: copy TEMPLATE to OUTPUT replacing each @NAME@ by VALUE.
render() {
	local template=$1 output=$2 pair value args=()
	shift 2
	for pair in "$@"; do
		value=$(printf '%s' "${pair#*=}" | sed 's/[\\&|]/\\&/g') # escape for sed's replacement
		args+=(-e "s|@${pair%%=*}@|$value|g")
	done
	sed "${args[@]}" "$template" >"$output"
}

# apt_install PACKAGE: install a Debian package without letting it start its own service.
apt_install() {
	local guard=/usr/sbin/policy-rc.d added=""
	say "installing Debian package $1"
	if [[ ! -e $guard ]]; then
		# policy-rc.d exiting 101 tells the package scripts not to start services.
		printf '#!/bin/sh\nexit 101\n' | run_as_root tee "$guard" >/dev/null
		run_as_root chmod +x "$guard"
		added=yes
	fi
	local install=(env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$1")
	local status=0
	{
		# On a fresh machine the package lists may be missing or old: update once and retry.
		run_as_root "${install[@]}" || { run_as_root apt-get update -q && run_as_root "${install[@]}"; }
	} >>"$LOGS/apt.log" 2>&1 || status=$?
	[[ -z $added ]] || run_as_root rm -f "$guard"
	((status == 0)) || fail_with_logs "could not install $1 with apt-get" "$LOGS/apt.log"
}

# check_external NAME ADDRESS DEFAULT_PORT VARIABLE: the service runs elsewhere; is it reachable?
check_external() {
	if reachable "$2" "$3"; then
		say "$1: using $2 (from $4)"
	else
		die "$1: $2 (from $4) is not reachable"
	fi
}

# foreign NAME ADDRESS: the service's port is served by a process this folder did not start (a
# second checkout, a system service): use it as it is, and say that `down` will leave it alone.
foreign() {
	say "$1: $2 is served by a process not started from $STATE; using it (down will not stop it)"
}

# ---------------------------------------------------------------------------------------------
# Mosquitto

mqtt_start() {
	if [[ -n ${IOTDATA_MQTT_URL:-} ]]; then
		check_external mqtt "$MQTT_URL" 1883 IOTDATA_MQTT_URL
		return
	fi
	if pid_of "$MQTT_PIDFILE" mosquitto >/dev/null; then
		say "mqtt: already running on $MQTT_URL"
		return
	fi
	if tcp_open 127.0.0.1 1883; then
		foreign mqtt 127.0.0.1:1883
		return
	fi
	local mosquitto
	mosquitto=$(command -v mosquitto || echo /usr/sbin/mosquitto)
	if [[ ! -x $mosquitto ]]; then
		apt_install mosquitto
		mosquitto=$(command -v mosquitto || echo /usr/sbin/mosquitto)
	fi

	mkdir -p "$STATE/mosquitto"
	render "$CONF/mosquitto.conf" "$STATE/mosquitto/mosquitto.conf" \
		"STATE_DIR=$STATE/mosquitto" "LOG_FILE=$MQTT_LOG" "RUN_AS=$(id -un)"
	say "mqtt: starting Mosquitto on $MQTT_URL"
	# -d daemonises and the broker writes its own pid file. 9>&- keeps our lock out of it.
	"$mosquitto" -c "$STATE/mosquitto/mosquitto.conf" -d </dev/null >>"$LOGS/mosquitto.out" 2>&1 9>&- ||
		fail_with_logs "mqtt: mosquitto did not start" "$LOGS/mosquitto.out" "$MQTT_LOG"
	wait_until 15 tcp_open 127.0.0.1 1883 ||
		fail_with_logs "mqtt: Mosquitto is not accepting connections on 127.0.0.1:1883" \
			"$LOGS/mosquitto.out" "$MQTT_LOG"
}

mqtt_stop() {
	[[ -n ${IOTDATA_MQTT_URL:-} ]] && { say "mqtt: external ($MQTT_URL), left alone"; return; }
	# A clean stop writes the persistence database, so persistent sessions survive.
	stop_pid mqtt "$MQTT_PIDFILE" mosquitto 30
}

mqtt_status() {
	local state=down
	reachable "$MQTT_URL" 1883 && state=up
	if [[ -n ${IOTDATA_MQTT_URL:-} ]]; then
		status_line mqtt "$MQTT_URL" $state "(external)"
	else
		status_line mqtt "$MQTT_URL" $state "$MQTT_LOG"
	fi
}

# ---------------------------------------------------------------------------------------------
# Apache Kafka

# kafka_fetch: make sure the jars of this Kafka version are in the cache (Maven, first run only).
kafka_fetch() {
	local stamp="$KAFKA_LIBS.stamp" want
	want=$(sha256sum "$CONF/kafka/pom.xml" | cut -d' ' -f1)
	[[ -d $KAFKA_LIBS && $(cat "$stamp" 2>/dev/null) == "$want" ]] && return
	command -v mvn >/dev/null || die "kafka: Maven (mvn) is needed to fetch the Kafka jars"
	say "kafka: fetching Apache Kafka $KAFKA_VERSION jars with Maven (first start only)"
	rm -rf "$KAFKA_LIBS.tmp"
	mvn -B -q -Dstyle.color=never -f "$CONF/kafka/pom.xml" dependency:copy-dependencies \
		-DincludeScope=runtime -DoutputDirectory="$KAFKA_LIBS.tmp" >"$LOGS/kafka-maven.log" 2>&1 ||
		fail_with_logs "kafka: Maven could not fetch the Kafka jars" "$LOGS/kafka-maven.log"
	rm -rf "$KAFKA_LIBS"
	mv "$KAFKA_LIBS.tmp" "$KAFKA_LIBS"
	echo "$want" >"$stamp"
}

# kafka_tool MAIN_CLASS ARGS...: run one of Kafka's short-lived command-line tools.
kafka_tool() {
	java -Xmx256m -XX:TieredStopAtLevel=1 \
		-Dlog4j.configuration="file:$CONF/kafka/tools-log4j.properties" \
		-cp "$KAFKA_LIBS/*" "$@"
}

# kafka_ready: the broker accepts connections and answers a metadata request (a topic listing).
kafka_ready() {
	tcp_open 127.0.0.1 9092 &&
		kafka_tool org.apache.kafka.tools.TopicCommand --bootstrap-server 127.0.0.1:9092 \
			--command-config "$STATE/kafka/probe.properties" --list >/dev/null 2>>"$LOGS/kafka.out"
}

# kafka_wait PID: wait until the broker is ready; fail early when its JVM exits.
kafka_wait() {
	local deadline=$((SECONDS + 120))
	until kafka_ready; do
		kill -0 "$1" 2>/dev/null ||
			fail_with_logs "kafka: the broker exited during start-up" "$LOGS/kafka.out" "$KAFKA_LOG"
		((SECONDS < deadline)) ||
			fail_with_logs "kafka: no answer on 127.0.0.1:9092 after 120 s" "$LOGS/kafka.out" "$KAFKA_LOG"
		sleep 1
	done
}

# kafka_tls DIR: a test CA, a certificate for 127.0.0.1 signed by it (with its key, the broker's
# PEM keystore) and a client certificate for mutual TLS; made once, kept across restarts.
kafka_tls() {
	local tls=$1 name
	[[ -s $tls/server-keystore.pem && -s $tls/client.pem ]] && return 0
	command -v openssl >/dev/null || apt_install openssl
	mkdir -p "$tls"
	(
		cd "$tls"
		key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1"; }
		key ca.key
		openssl req -x509 -new -key ca.key -out ca.pem -days 3650 -subj "/CN=iotdata test CA"
		for name in server client; do
			key $name.key
			openssl req -new -key $name.key -out $name.csr -subj "/CN=iotdata-test-$name"
		done
		printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >server.ext
		printf 'extendedKeyUsage=clientAuth\n' >client.ext
		for name in server client; do
			openssl x509 -req -in $name.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
				-days 3650 -extfile $name.ext -out $name.pem
		done
		cat server.key server.pem >server-keystore.pem
		rm -f ./*.csr ./*.ext ca.srl
	) >>"$LOGS/kafka.out" 2>&1 || fail_with_logs "kafka: could not make the TLS certificates" "$LOGS/kafka.out"
}

# kafka_scram: the SCRAM login of the SASL listener (kept in the cluster's metadata: once).
kafka_scram() {
	local marker="$STATE/kafka/data/.iotdata-scram-user" mechanism
	[[ -f $marker ]] && return 0
	for mechanism in SCRAM-SHA-256 SCRAM-SHA-512; do # one per request
		kafka_tool kafka.admin.ConfigCommand --bootstrap-server 127.0.0.1:9092 --alter \
			--add-config "$mechanism=[password=iotdata-test]" \
			--entity-type users --entity-name iotdata-scram >>"$LOGS/kafka.out" 2>&1 ||
			fail_with_logs "kafka: could not add the SCRAM user" "$LOGS/kafka.out"
	done
	touch "$marker"
}

kafka_start() {
	if [[ -n ${IOTDATA_KAFKA_BOOTSTRAP:-} ]]; then
		check_external kafka "$KAFKA_BOOTSTRAP" 9092 IOTDATA_KAFKA_BOOTSTRAP
		return
	fi
	if pid_of "$KAFKA_PIDFILE" kafka.Kafka >/dev/null; then
		say "kafka: already running on $KAFKA_BOOTSTRAP"
		return
	fi
	command -v java >/dev/null || die "kafka: java (17) is needed to run Kafka"
	kafka_fetch
	local dir="$STATE/kafka"
	mkdir -p "$dir/data"
	# The readiness probe must fail fast instead of retrying for the client default of 60 s.
	printf 'request.timeout.ms=5000\ndefault.api.timeout.ms=5000\n' >"$dir/probe.properties"

	if tcp_open 127.0.0.1 9092; then
		kafka_ready || die "kafka: 127.0.0.1:9092 is taken by a process that is not a Kafka broker"
		foreign kafka 127.0.0.1:9092
		return
	fi
	local port
	for port in 9093 9094 9095; do
		tcp_open 127.0.0.1 $port && die "kafka: 127.0.0.1:$port (a listener of the broker) is taken"
	done

	kafka_tls "$KAFKA_TLS"
	render "$CONF/kafka/server.properties" "$dir/server.properties" "DATA_DIR=$dir/data" \
		"TLS_DIR=$KAFKA_TLS"

	# Format the storage once; later starts reuse it (topics and offsets survive restarts).
	if [[ ! -f $dir/data/meta.properties ]]; then
		local cluster_id
		cluster_id=$(kafka_tool kafka.tools.StorageTool random-uuid 2>>"$LOGS/kafka.out")
		say "kafka: formatting storage (cluster id $cluster_id)"
		kafka_tool kafka.tools.StorageTool format --config "$dir/server.properties" \
			--cluster-id "$cluster_id" >>"$LOGS/kafka.out" 2>&1 ||
			fail_with_logs "kafka: could not format the storage in $dir/data" "$LOGS/kafka.out"
	fi

	say "kafka: starting Apache Kafka $KAFKA_VERSION on $KAFKA_BOOTSTRAP"
	rm -f "$KAFKA_PIDFILE" # a stale one (broker killed) must not pass for the new JVM's
	# setsid detaches the broker from this shell's session; the inner shell records its own pid
	# and then becomes the JVM, so the pid file names the JVM. 9>&- keeps our lock out of it.
	# shellcheck disable=SC2016
	setsid bash -c 'echo $$ >"$0" && exec "$@"' "$KAFKA_PIDFILE" \
		java -Xms256m -Xmx512m -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:+ExitOnOutOfMemoryError \
		-Djava.awt.headless=true \
		-Dlog4j.configuration="file:$CONF/kafka/log4j.properties" -Dkafka.logs.dir="$LOGS" \
		-cp "$KAFKA_LIBS/*" kafka.Kafka "$dir/server.properties" \
		</dev/null >>"$LOGS/kafka.out" 2>&1 9>&- &
	wait_until 10 test -s "$KAFKA_PIDFILE" || die "kafka: the broker did not write its pid file"
	kafka_wait "$(<"$KAFKA_PIDFILE")"
	kafka_scram
}

kafka_stop() {
	[[ -n ${IOTDATA_KAFKA_BOOTSTRAP:-} ]] && {
		say "kafka: external ($KAFKA_BOOTSTRAP), left alone"
		return
	}
	stop_pid kafka "$KAFKA_PIDFILE" kafka.Kafka 60
}

kafka_status() {
	local state=down
	reachable "$KAFKA_BOOTSTRAP" 9092 && state=up
	if [[ -n ${IOTDATA_KAFKA_BOOTSTRAP:-} ]]; then
		status_line kafka "$KAFKA_BOOTSTRAP" $state "(external)"
	else
		status_line kafka "$KAFKA_BOOTSTRAP (Kafka $KAFKA_VERSION)" $state "$KAFKA_LOG"
	fi
}

# ---------------------------------------------------------------------------------------------
# Apache Kafka, a three-node cluster (replication and broker-failure tests)
#
# Node N (1-3) is broker and controller in one JVM: its broker listener on 127.0.0.1:1909(N+1)
# (19092, 19093, 19094), its controller listener on 127.0.0.1:1919(N+1). Each has its folder
# $STATE/kafka-cluster/node-N (config, data, pid file) and its logs in $LOGS/kafka-cluster-N/.
# `start kafka-cluster` starts the nodes that are not running (all of them, or the one a test
# killed, which comes back with its data) and waits until all three are registered.

CLUSTER_NODES=(1 2 3)
CLUSTER_DIR="$STATE/kafka-cluster"
CLUSTER_BOOTSTRAP=${IOTDATA_KAFKA_CLUSTER_BOOTSTRAP:-127.0.0.1:19092,127.0.0.1:19093,127.0.0.1:19094}
# Three of these run beside the single node on 2 cores: small heaps, few GC threads, and only
# the quick JIT compiler (C1), which brings the three nodes up in about 6 s instead of 10 (they
# compete for the cores while starting) and costs throughput the tests do not need.
CLUSTER_JVM=(-Xms128m -Xmx384m -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:ParallelGCThreads=1
	-XX:ConcGCThreads=1 -XX:TieredStopAtLevel=1 -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true)

cluster_port() { echo $((19091 + $1)); }
cluster_controller_port() { echo $((19191 + $1)); }
cluster_dir() { echo "$CLUSTER_DIR/node-$1"; }
cluster_logs() { echo "$LOGS/kafka-cluster-$1"; }

# cluster_pid NODE: the pid of the node's JVM, if it runs (started from $STATE).
cluster_pid() { pid_of "$(cluster_dir "$1")/kafka.pid" "$(cluster_dir "$1")/server.properties"; }

# cluster_fail MESSAGE NODE...: fail_with_logs with the logs of these nodes (all when none is
# named), after the first errors each of them logged in this start (a broker's last lines are
# often those of its shutdown, not of the cause).
cluster_fail() {
	local message=$1 node log logs=()
	shift
	(($# > 0)) || set -- "${CLUSTER_NODES[@]}"
	for node in "$@"; do
		log="$(cluster_logs "$node")/kafka.log"
		logs+=("$(cluster_logs "$node")/kafka.out" "$log")
		[[ -s $log ]] || continue
		printf -- '--- first errors of node %s since it started ---\n' "$node" >&2
		# The JVM's first log line of each start resets the list.
		awk '/Log4jController MBean/ { found = ""; n = 0 }
			/ (ERROR|FATAL) / && n < 5 { found = found $0 "\n"; n++ }
			END { printf "%s", found }' "$log" >&2
	done
	fail_with_logs "$message" "${logs[@]}"
}

# cluster_brokers: how many brokers the cluster's metadata lists that answer a request (a
# metadata request to the bootstrap servers, then an ApiVersions request to each broker).
cluster_brokers() {
	kafka_tool kafka.admin.BrokerApiVersionsCommand --bootstrap-server "$CLUSTER_BOOTSTRAP" \
		--command-config "$CLUSTER_DIR/probe.properties" 2>>"$LOGS/kafka-cluster-probe.out" |
		grep '(id: ' | grep -vc 'ERROR' || true
}

# cluster_ready: every node accepts connections and all of them are registered brokers.
cluster_ready() {
	local node
	for node in "${CLUSTER_NODES[@]}"; do
		tcp_open 127.0.0.1 "$(cluster_port "$node")" || return 1
	done
	[[ $(cluster_brokers) == "${#CLUSTER_NODES[@]}" ]]
}

# cluster_wait: wait until the cluster is ready; fail early when a JVM of ours exits.
cluster_wait() {
	local deadline=$((SECONDS + 120)) node
	until cluster_ready; do
		for node in "${CLUSTER_NODES[@]}"; do
			cluster_pid "$node" >/dev/null || cluster_fail "kafka-cluster: node $node exited during start-up" "$node"
		done
		((SECONDS < deadline)) ||
			cluster_fail "kafka-cluster: not all of $CLUSTER_BOOTSTRAP registered after 120 s"
		sleep 1
	done
}

# cluster_render NODE: the node's server.properties from the template.
cluster_render() {
	local node=$1 dir voters="" other
	dir=$(cluster_dir "$node")
	for other in "${CLUSTER_NODES[@]}"; do
		voters+="${voters:+,}$other@127.0.0.1:$(cluster_controller_port "$other")"
	done
	mkdir -p "$dir/data" "$(cluster_logs "$node")"
	render "$CONF/kafka/cluster.properties" "$dir/server.properties" "NODE_ID=$node" \
		"PORT=$(cluster_port "$node")" "CONTROLLER_PORT=$(cluster_controller_port "$node")" \
		"VOTERS=$voters" "DATA_DIR=$dir/data"
}

# cluster_id: the cluster's id; made once, kept in $CLUSTER_DIR/cluster.id (or read back from a
# node's formatted storage).
cluster_id() {
	local file="$CLUSTER_DIR/cluster.id" meta
	if [[ ! -s $file ]]; then
		meta=$(cat "$CLUSTER_DIR"/node-*/data/meta.properties 2>/dev/null | sed -n 's/^cluster\.id=//p' | head -n 1)
		[[ -n $meta ]] || meta=$(kafka_tool kafka.tools.StorageTool random-uuid 2>>"$LOGS/kafka-cluster-probe.out")
		[[ -n $meta ]] || fail_with_logs "kafka-cluster: no cluster id" "$LOGS/kafka-cluster-probe.out"
		echo "$meta" >"$file"
	fi
	cat "$file"
}

# cluster_format NODE...: format the storage of each of these nodes that has none, in parallel,
# all with one cluster id; later starts reuse it (topics and offsets survive restarts).
cluster_format() {
	local node dir cluster_id pids=() failed=0 pid
	for node in "$@"; do
		dir=$(cluster_dir "$node")
		[[ -f $dir/data/meta.properties ]] && continue
		cluster_id=$(cluster_id)
		say "kafka-cluster: formatting the storage of node $node (cluster id $cluster_id)"
		kafka_tool kafka.tools.StorageTool format --config "$dir/server.properties" \
			--cluster-id "$cluster_id" >>"$(cluster_logs "$node")/kafka.out" 2>&1 &
		pids+=($!)
	done
	for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
	((failed == 0)) || cluster_fail "kafka-cluster: could not format the storage in $CLUSTER_DIR"
}

# cluster_launch NODE: start the node's JVM in the background (as kafka_start does the single
# node's) and wait for its pid file.
cluster_launch() {
	local node=$1 dir pidfile
	dir=$(cluster_dir "$node")
	pidfile="$dir/kafka.pid"
	rm -f "$pidfile"
	# shellcheck disable=SC2016
	setsid bash -c 'echo $$ >"$0" && exec "$@"' "$pidfile" \
		java "${CLUSTER_JVM[@]}" \
		-Dlog4j.configuration="file:$CONF/kafka/log4j.properties" \
		-Dkafka.logs.dir="$(cluster_logs "$node")" \
		-cp "$KAFKA_LIBS/*" kafka.Kafka "$dir/server.properties" \
		</dev/null >>"$(cluster_logs "$node")/kafka.out" 2>&1 9>&- &
	wait_until 10 test -s "$pidfile" || die "kafka-cluster: node $node did not write its pid file"
}

# cluster_taken NODE...: the listener ports of these nodes that something already serves.
cluster_taken() {
	local node port
	for node in "$@"; do
		for port in $(cluster_port "$node") $(cluster_controller_port "$node"); do
			tcp_open 127.0.0.1 "$port" && echo "$port"
		done
	done
	return 0
}

kafka_cluster_start() {
	if [[ -n ${IOTDATA_KAFKA_CLUSTER_BOOTSTRAP:-} ]]; then
		check_external kafka-cluster "$CLUSTER_BOOTSTRAP" 9092 IOTDATA_KAFKA_CLUSTER_BOOTSTRAP
		return
	fi
	local node missing=() taken
	for node in "${CLUSTER_NODES[@]}"; do
		cluster_pid "$node" >/dev/null || missing+=("$node")
	done
	if ((${#missing[@]} == 0)); then
		say "kafka-cluster: already running on $CLUSTER_BOOTSTRAP"
		return
	fi
	command -v java >/dev/null || die "kafka-cluster: java (17) is needed to run Kafka"
	kafka_fetch
	mkdir -p "$CLUSTER_DIR"
	printf 'request.timeout.ms=5000\ndefault.api.timeout.ms=5000\n' >"$CLUSTER_DIR/probe.properties"

	taken=$(cluster_taken "${missing[@]}")
	if [[ -n $taken ]]; then
		# Another checkout's cluster (none of its nodes is ours): use it once it is whole (a fault
		# test there may be restarting a node).
		if ((${#missing[@]} < ${#CLUSTER_NODES[@]})) || ! wait_until 60 cluster_ready; then
			die "kafka-cluster: 127.0.0.1 port(s) ${taken//$'\n'/ } are taken by something that is not a ready three-node Kafka cluster"
		fi
		foreign kafka-cluster "$CLUSTER_BOOTSTRAP"
		return
	fi

	local started=$EPOCHREALTIME
	for node in "${missing[@]}"; do cluster_render "$node"; done
	cluster_format "${missing[@]}"
	say "kafka-cluster: starting node(s) ${missing[*]} of Apache Kafka $KAFKA_VERSION on $CLUSTER_BOOTSTRAP"
	for node in "${missing[@]}"; do cluster_launch "$node"; done
	cluster_wait
	say "kafka-cluster: ${#CLUSTER_NODES[@]} brokers ready in $(elapsed "$started") s"
}

kafka_cluster_stop() {
	[[ -n ${IOTDATA_KAFKA_CLUSTER_BOOTSTRAP:-} ]] && {
		say "kafka-cluster: external ($CLUSTER_BOOTSTRAP), left alone"
		return
	}
	# All at once: a node stopped after the others would wait for a controller quorum in vain.
	local node pids=() failed=0 pid
	for node in "${CLUSTER_NODES[@]}"; do
		stop_pid "kafka-cluster node $node" "$(cluster_dir "$node")/kafka.pid" \
			"$(cluster_dir "$node")/server.properties" 30 &
		pids+=($!)
	done
	for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
	((failed == 0)) || die "kafka-cluster: a node did not stop"
}

kafka_cluster_status() {
	local node state port
	if [[ -n ${IOTDATA_KAFKA_CLUSTER_BOOTSTRAP:-} ]]; then
		state=down
		reachable "$CLUSTER_BOOTSTRAP" 9092 && state=up
		status_line kafka-cluster "$CLUSTER_BOOTSTRAP" $state "(external)"
		return
	fi
	for node in "${CLUSTER_NODES[@]}"; do
		port=$(cluster_port "$node")
		state=down
		tcp_open 127.0.0.1 "$port" && state=up
		status_line kafka-cluster "127.0.0.1:$port (node $node of 3, Kafka $KAFKA_VERSION)" $state \
			"$(cluster_logs "$node")/kafka.log"
	done
}

# ---------------------------------------------------------------------------------------------
# PostgreSQL (the Debian cluster "15 main", managed with postgresql-common's tools)

# pg_cluster_field N: column N of `pg_lsclusters` for our cluster (4 = status, 7 = log file).
pg_cluster_field() {
	pg_lsclusters -h 2>/dev/null | awk -v v=$PG_VERSION -v c=$PG_CLUSTER -v n="$1" \
		'$1 == v && $2 == c { print $n }'
}

pg_running() { [[ $(pg_cluster_field 4) == online* ]]; }

# pg_psql ARGS...: psql as the postgres superuser over the local socket (peer authentication).
pg_psql() {
	local as_postgres=(sudo -u postgres --)
	[[ $(id -u) != 0 ]] || as_postgres=(runuser -u postgres --)
	(cd / && "${as_postgres[@]}" psql -X -q -v ON_ERROR_STOP=1 -p 5432 "$@")
}

# pg_configure: make the cluster listen on 127.0.0.1:5432; prints "changed" if it had to.
pg_configure() {
	local port listen
	port=$(pg_conftool -s $PG_VERSION $PG_CLUSTER show port 2>/dev/null || echo 5432)
	listen=$(pg_conftool -s $PG_VERSION $PG_CLUSTER show listen_addresses 2>/dev/null || echo localhost)
	if [[ $port != 5432 ]]; then
		run_as_root pg_conftool $PG_VERSION $PG_CLUSTER set port 5432 >&2
		echo changed
	fi
	case $listen in
	*localhost* | *127.0.0.1* | *'*'*) ;;
	*)
		run_as_root pg_conftool $PG_VERSION $PG_CLUSTER set listen_addresses "localhost,$listen" >&2
		echo changed
		;;
	esac
}

# pg_provision: the role and database the tests use, created or reset idempotently.
pg_provision() {
	pg_psql -d postgres <<-'SQL'
		DO $$
		BEGIN
		  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'iotdata') THEN
		    CREATE ROLE iotdata LOGIN CREATEDB PASSWORD 'iotdata';
		  ELSE
		    ALTER ROLE iotdata LOGIN CREATEDB PASSWORD 'iotdata';
		  END IF;
		END
		$$;
		SELECT 'CREATE DATABASE iotdata_test OWNER iotdata'
		WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'iotdata_test') \gexec
	SQL
}

pg_start() {
	if [[ -n ${IOTDATA_POSTGRES_DSN:-} ]]; then
		if pg_isready -q -t 5 -d "$POSTGRES_DSN" 2>/dev/null || reachable "$POSTGRES_DSN" 5432; then
			say "postgres: using the server of IOTDATA_POSTGRES_DSN"
			return
		fi
		die "postgres: the server of IOTDATA_POSTGRES_DSN is not reachable"
	fi
	if [[ ! -x /usr/lib/postgresql/$PG_VERSION/bin/postgres ]] || ! command -v pg_ctlcluster >/dev/null; then
		apt_install postgresql-$PG_VERSION
	fi
	if [[ -z $(pg_cluster_field 1) ]]; then
		say "postgres: creating cluster $PG_VERSION $PG_CLUSTER"
		run_as_root pg_createcluster --port 5432 $PG_VERSION $PG_CLUSTER >/dev/null
	fi
	ln -sfn "$(pg_cluster_field 7)" "$PG_LOG"

	if [[ -n $(pg_configure) ]] && pg_running; then
		say "postgres: restarting cluster $PG_VERSION $PG_CLUSTER for the new settings"
		run_as_root pg_ctlcluster $PG_VERSION $PG_CLUSTER restart ||
			fail_with_logs "postgres: the cluster did not restart" "$PG_LOG"
	fi
	if pg_running; then
		say "postgres: already running on 127.0.0.1:5432"
	else
		say "postgres: starting cluster $PG_VERSION $PG_CLUSTER on 127.0.0.1:5432"
		run_as_root pg_ctlcluster $PG_VERSION $PG_CLUSTER start 9>&- ||
			fail_with_logs "postgres: the cluster did not start" "$PG_LOG"
	fi
	wait_until 30 pg_isready -q -h 127.0.0.1 -p 5432 ||
		fail_with_logs "postgres: not accepting connections on 127.0.0.1:5432" "$PG_LOG"
	pg_provision || fail_with_logs "postgres: could not create role/database iotdata" "$PG_LOG"
	# The real check: the tests' DSN logs in over TCP with its password.
	PGCONNECT_TIMEOUT=5 psql -X -q -At -d "$POSTGRES_DSN" -c 'SELECT 1' >/dev/null ||
		fail_with_logs "postgres: cannot log in with $POSTGRES_DSN" "$PG_LOG"
}

pg_stop() {
	[[ -n ${IOTDATA_POSTGRES_DSN:-} ]] && {
		say "postgres: external, left alone"
		return
	}
	if command -v pg_ctlcluster >/dev/null && pg_running; then
		say "stopping postgres (cluster $PG_VERSION $PG_CLUSTER)"
		run_as_root pg_ctlcluster $PG_VERSION $PG_CLUSTER stop -m fast
	else
		say "postgres is not running"
	fi
}

pg_status() {
	local state=down shown=$POSTGRES_DSN
	if command -v pg_isready >/dev/null; then
		pg_isready -q -t 3 -d "$POSTGRES_DSN" 2>/dev/null && state=up
	else
		reachable "$POSTGRES_DSN" 5432 && state=up
	fi
	if [[ -n ${IOTDATA_POSTGRES_DSN:-} ]]; then
		shown=$(sed -E 's#(://[^:/@]*):[^@]*@#\1:***@#' <<<"$shown") # hide a password
		status_line postgres "$shown" $state "(external)"
	else
		status_line postgres "$shown" $state "$PG_LOG"
	fi
}

# ---------------------------------------------------------------------------------------------
# Commands

ALL=(mqtt kafka kafka-cluster postgres)
ANY_DOWN=0

status_line() {
	printf '%-13s %-58s %-5s %s\n' "$1" "$2" "$3" "$4"
	[[ $3 == up ]] || ANY_DOWN=1
}

usage() {
	sed -n '2,15s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
	exit 2
}

# service_names NAME...: set NAMES to the function prefixes of the named services (all of them
# when none is named).
service_names() {
	local name
	(($# > 0)) || set -- "${ALL[@]}"
	NAMES=()
	for name in "$@"; do
		case $name in
		mqtt | mosquitto) NAMES+=(mqtt) ;;
		kafka) NAMES+=(kafka) ;;
		kafka-cluster | cluster) NAMES+=(kafka_cluster) ;;
		postgres | postgresql | pg) NAMES+=(pg) ;;
		*) die "unknown service '$name' (expected mqtt, kafka, kafka-cluster or postgres)" ;;
		esac
	done
}

# start_all NAME...: start each service; one failure does not keep the others from starting.
start_all() {
	local name failed=() shown
	for name in "$@"; do
		("${name}_start") || failed+=("$name")
	done
	shown=${failed[*]/pg/postgres}
	((${#failed[@]} == 0)) || die "failed to start: ${shown//_/-} (logs in $LOGS)"
}

stop_all() {
	local name
	for name in "$@"; do "${name}_stop"; done
}

main() {
	local command=${1:-}
	(($# == 0)) || shift
	case $command in
	up | start | down | stop | restart)
		service_names "$@"
		# One start or stop at a time, even when two test runs begin together.
		exec 9>"$STATE/.lock"
		flock -w 900 9 || die "another scripts/services.sh has held $STATE/.lock for 15 minutes"
		case $command in
		up | start) start_all "${NAMES[@]}" ;;
		down | stop) stop_all "${NAMES[@]}" ;;
		restart)
			stop_all "${NAMES[@]}"
			start_all "${NAMES[@]}"
			;;
		esac
		;;
	status)
		mqtt_status
		kafka_status
		kafka_cluster_status
		pg_status
		exit $((ANY_DOWN ? 3 : 0))
		;;
	*) usage ;;
	esac
}

main "$@"
