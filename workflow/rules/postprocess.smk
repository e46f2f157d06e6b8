# Post-processing of refine3d's half-maps: solvent mask, mask-corrected FSC, B-factor sharpening.

PP = config["postprocess"]

if RUN_REFINE3D:

    rule postprocess:
        input:
            half1=rules.refine3d.output.half1,
            half2=rules.refine3d.output.half2,
            mask=[PP["mask"]] if PP["mask"] else [],  # a file: an edited mask reruns the job
        output:
            map=f"{RESULTS}/postprocess/map_sharpened.mrc",
            mask=f"{RESULTS}/postprocess/mask.mrc",
            star=f"{RESULTS}/postprocess/postprocess.star",
            figures=report(
                [f"{RESULTS}/postprocess/postprocess_fsc_guinier.png", f"{RESULTS}/postprocess/postprocess_slices.png"],
                caption="../report/postprocess.rst",
                category="5. 3D refinement",
            ),
        params:
            out=f"{RESULTS}/postprocess",
            mask=flag("mask", PP["mask"]),
            lowpass=arg("mask-lowpass", PP["mask_lowpass"]),
            threshold=arg("mask-threshold", PP["mask_threshold"]),
            dilate=arg("extend", PP["extend"]),
            edge=arg("soft-edge", PP["soft_edge"]),
            fit_low=arg("fit-low", PP["fit_low"]),
            bfactor=[] if PP["bfactor"] == "auto" else ["--bfactor", str(PP["bfactor"])],
        conda:
            "../../envs/cpu.yaml"
        log:
            f"{RESULTS}/logs/postprocess.log",
        shell:
            "cryopipe postprocess --half1 {input.half1:q} --half2 {input.half2:q} {params.mask:q}"
            " {params.lowpass:q} {params.threshold:q} {params.dilate:q}"
            " {params.edge:q} {params.fit_low:q} {params.bfactor:q} --out {params.out:q} 2> {log:q}"
