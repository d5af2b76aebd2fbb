"""A real one-node SLURM (Debian's slurm-wlm, munge, MariaDB and slurmdbd) started from configs in a directory.

Every daemon runs in the foreground as a child of the test process, on ports chosen free, with its state, sockets and
logs in that directory, so it touches no system configuration and stopping it means stopping exactly those pids.
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import time
from pathlib import Path

DAEMONS = ("munged", "mariadbd", "mariadb-install-db", "slurmdbd", "slurmctld", "slurmd", "sacctmgr", "sbatch")
CLUSTER = "sycorec-test"
PARTITION = "debug"
# The node declares the job shapes slurm/stages.yaml asks for (task/none and proctrack/linuxproc confine nothing, so
# an 8-CPU job runs on this machine's cores) and count-only GPUs of a type with a feature, for typed GRES requests.
NODE = {"CPUs": 16, "RealMemory": 400_000, "Gres": "gpu:h100:4", "Feature": "h100,gpu80gb"}
DB_PASSWORD = "sycorec-test"


def missing_reason() -> str | None:
    """Why the real SLURM cannot start here, or None."""
    absent = [name for name in DAEMONS if shutil.which(name) is None]
    if absent:
        return f"needs Debian's slurm-wlm slurmdbd munge mariadb-server ({', '.join(absent)} not found)"
    if os.geteuid() != 0:
        return "the one-node SLURM runs its daemons as root (slurmd launches jobs as their user)"
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait(check, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not come up within {timeout:.0f} s")
        time.sleep(0.5)


class OneNodeSlurm:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.host = socket.gethostname().split(".")[0]
        self.conf = base / "slurm.conf"
        self.munge_socket = base / "munge" / "munge.socket"
        self.db_socket = base / "db.sock"
        self.ports = {name: _free_port() for name in ("ctld", "slurmd", "dbd", "db")}
        self.procs: list[subprocess.Popen] = []
        self.env = dict(os.environ, SLURM_CONF=str(self.conf))

    # ---- configs -------------------------------------------------------------------------------------------------

    def write_configs(self) -> None:
        b = self.base
        for sub in ("munge", "state", "spool", "log", "db"):
            (b / sub).mkdir(parents=True, exist_ok=True)
        (b / "munge").chmod(0o755)  # munged wants its socket's directory searchable by every client
        node = " ".join(f"{k}={v}" for k, v in NODE.items())
        self.conf.write_text(
            f"""ClusterName={CLUSTER}
SlurmctldHost={self.host}(127.0.0.1)
SlurmctldPort={self.ports["ctld"]}
SlurmdPort={self.ports["slurmd"]}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={self.munge_socket}
CredType=cred/munge
StateSaveLocation={b}/state
SlurmdSpoolDir={b}/spool
SlurmctldPidFile={b}/slurmctld.pid
SlurmdPidFile={b}/slurmd.pid
SlurmctldLogFile={b}/log/slurmctld.log
SlurmdLogFile={b}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SlurmdParameters=config_overrides
GresTypes=gpu
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort={self.ports["dbd"]}
AccountingStoragePass={self.munge_socket}
AccountingStorageEnforce=associations,limits,qos
JobRequeue=1
ReturnToService=2
KillWait=10
MinJobAge=600
SchedulerParameters=defer_batch=0
NodeName={self.host} NodeAddr=127.0.0.1 {node} State=UNKNOWN
PartitionName={PARTITION} Nodes={self.host} Default=YES MaxTime=1-00:00:00 State=UP
"""
        )
        # slurmd counts a GPU per device file; these stand for no hardware (the same device as /dev/null)
        gpus = int(NODE["Gres"].split(":")[2])
        for index in range(gpus):
            device = b / "dev" / f"gpu{index}"
            device.parent.mkdir(exist_ok=True)
            if not device.exists():
                os.mknod(device, stat.S_IFCHR | 0o666, os.makedev(1, 3))
        (b / "gres.conf").write_text(f"NodeName={self.host} Name=gpu Type=h100 File={b}/dev/gpu[0-{gpus - 1}]\n")
        dbd = b / "slurmdbd.conf"  # slurmdbd reads it beside $SLURM_CONF and refuses it readable by others
        dbd.write_text(
            f"""AuthType=auth/munge
AuthInfo=socket={self.munge_socket}
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort={self.ports["dbd"]}
SlurmUser=root
PidFile={b}/slurmdbd.pid
LogFile={b}/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={self.ports["db"]}
StorageUser=slurm
StoragePass={DB_PASSWORD}
StorageLoc=slurm_acct_db
"""
        )
        dbd.chmod(0o600)
        key = b / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)

    # ---- daemons -------------------------------------------------------------------------------------------------

    def _start(self, *cmd: str) -> None:
        log = open(self.base / "log" / f"{Path(cmd[0]).name}.out", "ab")  # noqa: SIM115 (lives as long as the daemon)
        self.procs.append(subprocess.Popen(cmd, env=self.env, stdout=log, stderr=log, cwd=self.base))

    def _ok(self, *cmd: str) -> bool:
        return subprocess.run(cmd, env=self.env, capture_output=True).returncode == 0

    def run(self, *cmd: str, check: bool = True) -> str:
        done = subprocess.run(cmd, env=self.env, capture_output=True, text=True)
        if check and done.returncode:
            raise RuntimeError(f"{' '.join(cmd)}: {done.stderr.strip() or done.stdout.strip()}")
        return done.stdout

    def start(self) -> None:
        b = self.base
        self.write_configs()
        self._start(
            "munged", "--foreground", "--force", f"--socket={self.munge_socket}", f"--key-file={b}/munge/munge.key",
            f"--pid-file={b}/munge/munged.pid", f"--log-file={b}/log/munged.log", f"--seed-file={b}/munge/seed",
        )  # fmt: skip
        _wait(self.munge_socket.exists, "munged")
        self.run(
            "mariadb-install-db", "--no-defaults", f"--datadir={b}/db", "--user=root",
            "--auth-root-authentication-method=socket", "--skip-test-db",
        )  # fmt: skip
        self._start(
            "mariadbd", "--no-defaults", f"--datadir={b}/db", f"--socket={self.db_socket}", "--user=root",
            "--bind-address=127.0.0.1", f"--port={self.ports['db']}", f"--pid-file={b}/mariadbd.pid",
            "--innodb-buffer-pool-size=64M",
        )  # fmt: skip
        sql = ["mariadb", "--no-defaults", f"--socket={self.db_socket}", "-uroot", "-e"]
        _wait(lambda: self._ok(*sql, "SELECT 1"), "mariadbd")
        user = "'slurm'@'127.0.0.1'"
        self.run(*sql, f"CREATE USER {user} IDENTIFIED BY '{DB_PASSWORD}'; GRANT ALL ON *.* TO {user}")
        self._start("slurmdbd", "-D")
        _wait(lambda: self._ok("sacctmgr", "-n", "list", "cluster"), "slurmdbd")
        self.run("sacctmgr", "-i", "add", "cluster", CLUSTER)
        self.run("sacctmgr", "-i", "add", "account", "sycorec", "Description=tests", "Organization=tests")
        self.run("sacctmgr", "-i", "add", "user", "root", "Account=sycorec", "DefaultAccount=sycorec")
        self._start("slurmctld", "-D", "-c")
        _wait(lambda: self._ok("scontrol", "ping"), "slurmctld")
        self._start("slurmd", "-D")
        _wait(lambda: self.run("sinfo", "-h", "-n", self.host, "-o", "%T", check=False).strip() == "idle", "slurmd")

    def stop(self) -> None:
        """Cancel what is left in the queue (its job steps end with it), then stop the daemons, newest first."""
        if self.procs and self._ok("scontrol", "ping"):
            ids = self.run("squeue", "-h", "-o", "%A", check=False).split()
            if ids:
                self.run("scancel", "--full", *ids, check=False)
            deadline = time.monotonic() + 30
            while self.run("squeue", "-h", check=False).strip() and time.monotonic() < deadline:
                time.sleep(0.5)
        for proc in reversed(self.procs):
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()
