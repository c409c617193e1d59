# Shared by the benchmark scripts (source it): a release of 5 start-first web services.
# release VERSION IMAGE_REF -> the release JSON (fleet_proto::ReleaseSpec) on stdout.
release() {
  local services=""
  for i in 1 2 3 4 5; do
    services+=$(jq -n --arg n "svc$i" --arg img "$2" '{name:$n,image:($img|capture("(?<repository>[^@]+)@(?<digest>.+)")+{tag:null}),entrypoint:null,command:[],env:{},working_dir:null,labels:{},volumes:[],ports:[],network_mode:"Release",healthcheck:{probe:"Image",interval:{secs:1,nanos:0},timeout:{secs:1,nanos:0},retries:3,start_period:{secs:0,nanos:0}},restart:"UnlessStopped",update:"StartFirst",health_deadline:{secs:30,nanos:0},hardware:[],resources:{memory_bytes:null,memory_reservation_bytes:null,memory_swap_bytes:null,cpu_millis:null,cpuset:null,pids:null,ulimits:[],realtime_priority:null,shm_bytes:null},security:{privileged:false,cap_add:[],cap_drop:[],read_only_rootfs:false,user:null},depends_on:[]}')
    services+=","
  done
  jq -n --arg v "$1" --argjson s "[${services%,}]" '{id:("bench@"+$v),app:"bench",version:$v,services:$s}'
}
