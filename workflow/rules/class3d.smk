# 3D classification (RELION-style regularised likelihood EM) of the selected particles.

C3 = config["class3d"]


def class3d_reference():
    """The initial map: class3d.reference, else the demo's; None (no 3D stages) for real data without one."""
    if C3["reference"]:
        return C3["reference"]
    return f"{RESULTS}/simulate/maps/conformation_1.mrc" if USE_SIM else None


POSED_PARTICLES = None  # particles with orientations, for BioEM


if class3d_reference() is None:
    sys.stderr.write("cryopipe: class3d.reference is empty: 3D classification and model ranking are left out\n")
else:

    rule class3d:
        input:
            particles=rules.select2d.output.particles,
            reference=class3d_reference(),
        output:
            # the last iteration under names independent of the count: every run writes them, so Snakemake
            # holds their metadata and a changed parameter (iterations included) reruns the job
            data=f"{RESULTS}/class3d/run_data.star",
            model=f"{RESULTS}/class3d/run_model.star",
            maps=expand(f"{RESULTS}/class3d/run_class{{k:03d}}.mrc", k=range(1, C3["classes"] + 1)),
            record=f"{RESULTS}/class3d/provenance.json",  # its recorded params rerun the job when they change
            figures=report(
                [f"{RESULTS}/class3d/class3d_slices.png", f"{RESULTS}/class3d/class3d_progress.png"],
                caption="../report/class3d.rst",
                category="4. 3D classification",
            ),
        params:
            out=f"{RESULTS}/class3d",
            launch=mpi_launch,
            classes=arg("classes", C3["classes"]),
            iterations=arg("iterations", C3["iterations"]),
            order=arg("healpix-order", C3["healpix_order"]),
            offset_range=arg("offset-range", C3["offset_range"]),
            offset_step=arg("offset-step", C3["offset_step"]),
            ini_high=arg("ini-high", C3["ini_high"]),
            tau2_fudge=arg("tau2-fudge", C3["tau2_fudge"]),
            symmetry=arg("symmetry", C3["symmetry"]),
            diameter=arg("particle-diameter", config["particle_diameter"]),
            device=arg("device", DEVICE),
        threads: STAGE_THREADS  # BLAS and FFT threads
        resources:
            mpi=MPI_DEFAULT,
            tasks=1,
            gpu=1 if DEVICE == "gpu" else 0,
        log:
            f"{RESULTS}/logs/class3d.log",
        shell:
            "{params.launch:q} cryopipe class3d --particles {input.particles:q} --reference {input.reference:q}"
            " {params.classes:q} {params.iterations:q} {params.order:q}"
            " {params.offset_range:q} {params.offset_step:q} {params.ini_high:q}"
            " {params.tau2_fudge:q} {params.symmetry:q} {params.diameter:q}"
            " {params.device:q} --out {params.out:q} 2> {log:q}"


    ALL_TARGETS.append(rules.class3d.output.model)
    POSED_PARTICLES = rules.class3d.output.data
