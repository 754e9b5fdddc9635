//! Which launcher started this process, and as which rank of how many, read from the
//! variables the launcher sets.
//!
//! The launchers, in the order they are looked for (the first whose variables are present
//! decides; a launcher run inside another, such as mpirun inside a Slurm job, sets its own
//! variables on top of the outer one's):
//!
//! 1. Open MPI's `mpirun`/`mpiexec` (also Open MPI 5 over PRRTE/PMIx):
//!    `OMPI_COMM_WORLD_SIZE`, `OMPI_COMM_WORLD_RANK`, `OMPI_COMM_WORLD_LOCAL_RANK`; a
//!    `PMIX_RANK` beside them must agree with the rank.
//! 2. A PMI launcher (MPICH's and Intel MPI's Hydra `mpiexec`, `srun --mpi=pmi2`):
//!    `PMI_SIZE`, `PMI_RANK`, local rank from Hydra's `MPI_LOCALRANKID` or Slurm's step.
//! 3. A PMIx launcher without Open MPI's variables (`srun --mpi=pmix`): `PMIX_RANK`, the size
//!    from Slurm's step (`SLURM_STEP_NUM_TASKS`); PMIx has no size variable, so `PMIX_RANK`
//!    without one is an error rather than a guess.
//! 4. A Slurm job step (`srun`): `SLURM_STEP_NUM_TASKS`, `SLURM_PROCID`, `SLURM_LOCALID`.
//!
//! Slurm's `SLURM_NTASKS` is never read: it is the allocation's task count, and it is also set
//! in the batch script of `sbatch -n N` (and the shell of `salloc -n N`), where only one
//! process runs until `srun` starts a step. Only `srun` sets `SLURM_STEP_NUM_TASKS`, for the
//! tasks of its step, so a batch script running `keel train` directly is one process, and
//! `srun -n 4 keel train` is four.

use std::ffi::OsString;

use crate::DistError;
use crate::collective::Collective;

/// What started this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Launcher {
    /// No launcher: one process.
    None,
    /// Open MPI's `mpirun` (or `mpiexec`).
    OpenMpi,
    /// A PMI launcher: MPICH's or Intel MPI's Hydra `mpiexec`, or `srun --mpi=pmi2`.
    Pmi,
    /// A PMIx launcher without Open MPI's variables, such as `srun --mpi=pmix`.
    Pmix,
    /// A Slurm job step started by `srun`.
    Slurm,
}

impl std::fmt::Display for Launcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Launcher::None => "no launcher",
            Launcher::OpenMpi => "mpirun (Open MPI)",
            Launcher::Pmi => "mpiexec (PMI)",
            Launcher::Pmix => "srun (Slurm) over PMIx",
            Launcher::Slurm => "srun (Slurm)",
        })
    }
}

/// This process's place in the job, as its launcher describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Launch {
    /// What started the process.
    pub launcher: Launcher,
    /// How many processes the launcher started (at least 1).
    pub size: usize,
    /// This process's rank, below `size`.
    pub rank: usize,
    /// This process's rank among those on its node (below `size`), when the launcher says;
    /// the GPU a rank uses is usually chosen by it.
    pub local_rank: Option<usize>,
}

const EXPECT_SIZE: &str = "a world size (a whole number, at least 1)";
const EXPECT_RANK: &str = "a rank (a whole number)";

/// Reads launcher variables from an environment given as a function.
struct Vars<F> {
    get: F,
}

impl<F: Fn(&str) -> Option<OsString>> Vars<F> {
    fn raw(&self, variable: &'static str) -> Option<String> {
        (self.get)(variable).map(|value| value.to_string_lossy().into_owned())
    }

    fn is_set(&self, variable: &'static str) -> bool {
        (self.get)(variable).is_some()
    }

    /// The variable as a whole number, `None` when unset; anything else set is an error.
    fn number(
        &self,
        variable: &'static str,
        expected: &'static str,
    ) -> Result<Option<usize>, DistError> {
        let Some(raw) = (self.get)(variable) else {
            return Ok(None);
        };
        let invalid = || DistError::InvalidVariable {
            variable,
            value: raw.to_string_lossy().into_owned(),
            expected,
        };
        let text = raw.to_str().ok_or_else(invalid)?;
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid());
        }
        text.parse().map(Some).map_err(|_| invalid())
    }

    /// A world size: a whole number of at least 1, `None` when unset.
    fn size(&self, variable: &'static str) -> Result<Option<usize>, DistError> {
        match self.number(variable, EXPECT_SIZE)? {
            Some(0) => Err(DistError::InvalidVariable {
                variable,
                value: self.raw(variable).unwrap_or_default(),
                expected: EXPECT_SIZE,
            }),
            size => Ok(size),
        }
    }

    /// A rank variable that must be set because `because` is, below `size`.
    fn required_rank(
        &self,
        variable: &'static str,
        because: &'static str,
        size: (&'static str, usize),
    ) -> Result<usize, DistError> {
        let rank =
            self.number(variable, EXPECT_RANK)?
                .ok_or_else(|| DistError::MissingVariable {
                    variable,
                    because: format!("{because}={}", self.raw(because).unwrap_or_default()),
                })?;
        check_below(variable, rank, size)
    }

    /// A rank variable that may be missing; when set it must be below `size`.
    fn optional_rank(
        &self,
        variable: &'static str,
        size: (&'static str, usize),
    ) -> Result<Option<usize>, DistError> {
        self.number(variable, EXPECT_RANK)?
            .map(|rank| check_below(variable, rank, size))
            .transpose()
    }

    /// When `variable` is set it must say `rank`, as `rank_variable` does.
    fn agrees(
        &self,
        variable: &'static str,
        rank_variable: &'static str,
        rank: usize,
    ) -> Result<(), DistError> {
        match self.number(variable, EXPECT_RANK)? {
            Some(other) if other != rank => Err(DistError::Inconsistent {
                first: format!("{variable}={other}"),
                second: format!("{rank_variable}={rank}"),
            }),
            _ => Ok(()),
        }
    }

    /// Slurm's local rank, but only inside an `srun` step of exactly `size` tasks: a batch
    /// step's `SLURM_LOCALID=0` is inherited by every rank an `mpiexec` inside it starts.
    fn slurm_local_rank(&self, size: (&'static str, usize)) -> Result<Option<usize>, DistError> {
        if self.size("SLURM_STEP_NUM_TASKS")? == Some(size.1) {
            self.optional_rank("SLURM_LOCALID", size)
        } else {
            Ok(None)
        }
    }
}

fn check_below(
    variable: &'static str,
    rank: usize,
    (size_variable, size): (&'static str, usize),
) -> Result<usize, DistError> {
    if rank < size {
        Ok(rank)
    } else {
        Err(DistError::RankOutOfRange {
            variable,
            rank,
            size_variable,
            size,
        })
    }
}

impl Launch {
    /// One process, no launcher.
    pub fn single() -> Launch {
        Launch {
            launcher: Launcher::None,
            size: 1,
            rank: 0,
            local_rank: Some(0),
        }
    }

    /// Reads this process's environment (see [`Launch::detect_in`]).
    pub fn detect() -> Result<Launch, DistError> {
        Launch::detect_in(|name| std::env::var_os(name))
    }

    /// Reads the launcher variables from `env` (a variable's name to its value, `None` when
    /// unset). A set variable that does not hold what its launcher writes (not a number, a
    /// rank not below the size, a size of 0, ranks that disagree) is an error naming the
    /// variable and its value; no variable of any launcher is one process.
    pub fn detect_in(env: impl Fn(&str) -> Option<OsString>) -> Result<Launch, DistError> {
        let vars = Vars { get: env };

        if let Some(size) = vars.size("OMPI_COMM_WORLD_SIZE")? {
            let world = ("OMPI_COMM_WORLD_SIZE", size);
            let rank = vars.required_rank("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", world)?;
            vars.agrees("PMIX_RANK", "OMPI_COMM_WORLD_RANK", rank)?;
            let local_rank = vars.optional_rank("OMPI_COMM_WORLD_LOCAL_RANK", world)?;
            return Ok(Launch {
                launcher: Launcher::OpenMpi,
                size,
                rank,
                local_rank,
            });
        }

        if vars.is_set("PMI_SIZE") || vars.is_set("PMI_RANK") {
            let size = vars
                .size("PMI_SIZE")?
                .ok_or_else(|| DistError::MissingVariable {
                    variable: "PMI_SIZE",
                    because: format!("PMI_RANK={}", vars.raw("PMI_RANK").unwrap_or_default()),
                })?;
            let world = ("PMI_SIZE", size);
            let rank = vars.required_rank("PMI_RANK", "PMI_SIZE", world)?;
            let local_rank = match vars.optional_rank("MPI_LOCALRANKID", world)? {
                Some(local) => Some(local),
                None => vars.slurm_local_rank(world)?,
            };
            return Ok(Launch {
                launcher: Launcher::Pmi,
                size,
                rank,
                local_rank,
            });
        }

        if vars.is_set("PMIX_RANK") {
            let size =
                vars.size("SLURM_STEP_NUM_TASKS")?
                    .ok_or_else(|| DistError::MissingVariable {
                        variable: "SLURM_STEP_NUM_TASKS",
                        because: format!("PMIX_RANK={}", vars.raw("PMIX_RANK").unwrap_or_default()),
                    })?;
            let world = ("SLURM_STEP_NUM_TASKS", size);
            let rank = vars.required_rank("PMIX_RANK", "PMIX_RANK", world)?;
            vars.agrees("SLURM_PROCID", "PMIX_RANK", rank)?;
            let local_rank = vars.slurm_local_rank(world)?;
            return Ok(Launch {
                launcher: Launcher::Pmix,
                size,
                rank,
                local_rank,
            });
        }

        if let Some(size) = vars.size("SLURM_STEP_NUM_TASKS")? {
            let world = ("SLURM_STEP_NUM_TASKS", size);
            let rank = vars.required_rank("SLURM_PROCID", "SLURM_STEP_NUM_TASKS", world)?;
            let local_rank = vars.optional_rank("SLURM_LOCALID", world)?;
            return Ok(Launch {
                launcher: Launcher::Slurm,
                size,
                rank,
                local_rank,
            });
        }

        Ok(Launch::single())
    }

    /// The communicator must span the processes the launcher started: an MPI that initialized
    /// as a singleton in each of them (a launcher it cannot talk to) is N separate worlds of 1.
    pub fn verify_world(&self, communicator: &dyn Collective) -> Result<(), DistError> {
        if communicator.size() == self.size {
            Ok(())
        } else {
            Err(DistError::WorldMismatch {
                launcher: self.launcher,
                launched: self.size,
                world: communicator.size(),
            })
        }
    }
}

/// For builds without the `mpi` feature: a process the launcher started as one of several
/// ranks must not train, since every rank would train the whole job alone and all of them
/// would write the same checkpoint store.
pub fn refuse_without_mpi(launch: &Launch) -> Result<(), DistError> {
    if launch.size > 1 {
        Err(DistError::WithoutMpi {
            rank: launch.rank,
            size: launch.size,
            launcher: launch.launcher,
        })
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::Single;

    fn detect(vars: &[(&str, &str)]) -> Result<Launch, DistError> {
        let env: BTreeMap<String, OsString> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        Launch::detect_in(|name| env.get(name).cloned())
    }

    fn launch(launcher: Launcher, size: usize, rank: usize, local_rank: Option<usize>) -> Launch {
        Launch {
            launcher,
            size,
            rank,
            local_rank,
        }
    }

    #[test]
    fn no_launcher_is_one_process() {
        assert_eq!(detect(&[("HOME", "/root")]).unwrap(), Launch::single());
    }

    #[test]
    fn open_mpi_variables() {
        let found = detect(&[
            ("OMPI_COMM_WORLD_SIZE", "4"),
            ("OMPI_COMM_WORLD_RANK", "3"),
            ("OMPI_COMM_WORLD_LOCAL_RANK", "1"),
            ("PMIX_RANK", "3"),
        ])
        .unwrap();
        assert_eq!(found, launch(Launcher::OpenMpi, 4, 3, Some(1)));
    }

    #[test]
    fn open_mpi_wins_over_the_slurm_job_it_runs_in() {
        let found = detect(&[
            ("OMPI_COMM_WORLD_SIZE", "8"),
            ("OMPI_COMM_WORLD_RANK", "5"),
            ("SLURM_NTASKS", "8"),
            ("SLURM_PROCID", "0"),
            ("SLURM_LOCALID", "0"),
        ])
        .unwrap();
        assert_eq!(found, launch(Launcher::OpenMpi, 8, 5, None));
    }

    #[test]
    fn open_mpi_rank_disagreeing_with_pmix_is_refused() {
        let error = detect(&[
            ("OMPI_COMM_WORLD_SIZE", "2"),
            ("OMPI_COMM_WORLD_RANK", "0"),
            ("PMIX_RANK", "1"),
        ])
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            "the launcher variables disagree: `PMIX_RANK=1` but `OMPI_COMM_WORLD_RANK=0`"
        );
    }

    #[test]
    fn open_mpi_size_without_rank_is_refused() {
        let error = detect(&[("OMPI_COMM_WORLD_SIZE", "2")]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "the launcher variable `OMPI_COMM_WORLD_RANK` is not set although \
             `OMPI_COMM_WORLD_SIZE=2` is"
        );
    }

    #[test]
    fn hydra_pmi_variables() {
        let found = detect(&[
            ("PMI_SIZE", "3"),
            ("PMI_RANK", "2"),
            ("MPI_LOCALRANKID", "0"),
        ])
        .unwrap();
        assert_eq!(found, launch(Launcher::Pmi, 3, 2, Some(0)));
    }

    #[test]
    fn pmi_under_srun_takes_the_local_rank_from_the_step() {
        let found = detect(&[
            ("PMI_SIZE", "4"),
            ("PMI_RANK", "3"),
            ("SLURM_STEP_NUM_TASKS", "4"),
            ("SLURM_PROCID", "3"),
            ("SLURM_LOCALID", "1"),
        ])
        .unwrap();
        assert_eq!(found, launch(Launcher::Pmi, 4, 3, Some(1)));
    }

    #[test]
    fn mpiexec_inside_a_batch_script_ignores_the_batch_local_id() {
        // The batch step's SLURM_LOCALID=0 is inherited by every rank mpiexec starts.
        let found = detect(&[
            ("PMI_SIZE", "4"),
            ("PMI_RANK", "3"),
            ("SLURM_NTASKS", "4"),
            ("SLURM_PROCID", "0"),
            ("SLURM_LOCALID", "0"),
        ])
        .unwrap();
        assert_eq!(found, launch(Launcher::Pmi, 4, 3, None));
    }

    #[test]
    fn pmi_rank_without_size_is_refused() {
        let error = detect(&[("PMI_RANK", "1")]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "the launcher variable `PMI_SIZE` is not set although `PMI_RANK=1` is"
        );
    }

    #[test]
    fn pmix_under_srun() {
        let found = detect(&[
            ("PMIX_RANK", "1"),
            ("SLURM_STEP_NUM_TASKS", "2"),
            ("SLURM_PROCID", "1"),
            ("SLURM_LOCALID", "1"),
        ])
        .unwrap();
        assert_eq!(found, launch(Launcher::Pmix, 2, 1, Some(1)));
    }

    #[test]
    fn pmix_rank_without_a_size_is_refused() {
        let error = detect(&[("PMIX_RANK", "0")]).unwrap_err();
        assert!(matches!(
            error,
            DistError::MissingVariable {
                variable: "SLURM_STEP_NUM_TASKS",
                ..
            }
        ));
    }

    #[test]
    fn srun_step() {
        let found = detect(&[
            ("SLURM_NTASKS", "8"),
            ("SLURM_STEP_NUM_TASKS", "8"),
            ("SLURM_STEP_ID", "0"),
            ("SLURM_PROCID", "6"),
            ("SLURM_LOCALID", "2"),
        ])
        .unwrap();
        assert_eq!(found, launch(Launcher::Slurm, 8, 6, Some(2)));
    }

    #[test]
    fn sbatch_batch_script_is_one_process() {
        // `sbatch -n 8` runs its script once, with the allocation's SLURM_NTASKS.
        let found = detect(&[
            ("SLURM_JOB_ID", "1234"),
            ("SLURM_NTASKS", "8"),
            ("SLURM_NPROCS", "8"),
            ("SLURM_PROCID", "0"),
            ("SLURM_LOCALID", "0"),
        ])
        .unwrap();
        assert_eq!(found, Launch::single());
    }

    #[test]
    fn non_numeric_rank_names_the_variable_and_value() {
        let error = detect(&[
            ("OMPI_COMM_WORLD_SIZE", "2"),
            ("OMPI_COMM_WORLD_RANK", "one"),
        ])
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            "the launcher variable `OMPI_COMM_WORLD_RANK=one` is not a rank (a whole number)"
        );
    }

    #[test]
    fn signed_padded_or_empty_numbers_are_refused() {
        for value in ["-1", "+1", " 1", "1 ", "", "0x1", "99999999999999999999999"] {
            let error = detect(&[("PMI_SIZE", "2"), ("PMI_RANK", value)]).unwrap_err();
            assert!(
                matches!(&error, DistError::InvalidVariable { variable: "PMI_RANK", value: v, .. } if v == value),
                "{value:?}: {error}"
            );
        }
    }

    #[test]
    fn world_size_zero_is_refused() {
        let error = detect(&[("SLURM_STEP_NUM_TASKS", "0"), ("SLURM_PROCID", "0")]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "the launcher variable `SLURM_STEP_NUM_TASKS=0` is not a world size (a whole \
             number, at least 1)"
        );
    }

    #[test]
    fn rank_not_below_size_is_refused() {
        let error = detect(&[("SLURM_STEP_NUM_TASKS", "4"), ("SLURM_PROCID", "4")]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "the launcher variable `SLURM_PROCID=4` is not below the world size \
             `SLURM_STEP_NUM_TASKS=4`"
        );
        let error = detect(&[
            ("OMPI_COMM_WORLD_SIZE", "2"),
            ("OMPI_COMM_WORLD_RANK", "1"),
            ("OMPI_COMM_WORLD_LOCAL_RANK", "2"),
        ])
        .unwrap_err();
        assert!(matches!(
            error,
            DistError::RankOutOfRange {
                variable: "OMPI_COMM_WORLD_LOCAL_RANK",
                rank: 2,
                ..
            }
        ));
    }

    #[cfg(unix)]
    #[test]
    fn non_utf8_value_is_refused_lossily_shown() {
        use std::os::unix::ffi::OsStringExt;
        let error = Launch::detect_in(|name| match name {
            "PMI_SIZE" => Some(OsString::from_vec(vec![b'2', 0xff])),
            "PMI_RANK" => Some(OsString::from("0")),
            _ => None,
        })
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            "the launcher variable `PMI_SIZE=2\u{fffd}` is not a world size (a whole number, \
             at least 1)"
        );
    }

    #[test]
    fn refuse_without_mpi_stops_a_multi_rank_start() {
        let error = refuse_without_mpi(&launch(Launcher::OpenMpi, 4, 2, Some(2))).unwrap_err();
        assert_eq!(
            error.to_string(),
            "keel was started as rank 2 of 4 by mpirun (Open MPI), but this build has no \
             multi-rank support (the `mpi` feature): 4 copies would each train alone and write \
             one store; start a single process (one task)"
        );
        refuse_without_mpi(&Launch::single()).unwrap();
        refuse_without_mpi(&launch(Launcher::Slurm, 1, 0, Some(0))).unwrap();
    }

    #[test]
    fn verify_world_refuses_singleton_worlds() {
        Launch::single().verify_world(&Single).unwrap();
        let error = launch(Launcher::Slurm, 4, 1, Some(1))
            .verify_world(&Single)
            .unwrap_err();
        assert!(matches!(
            error,
            DistError::WorldMismatch {
                launched: 4,
                world: 1,
                ..
            }
        ));
    }
}
