package org.imsfhir.hapi;

import ca.uhn.fhir.context.FhirContext;
import ca.uhn.fhir.context.support.ConceptValidationOptions;
import ca.uhn.fhir.context.support.ValidationSupportContext;
import java.util.Set;
import org.hl7.fhir.common.hapi.validation.support.BaseValidationSupport;
import org.hl7.fhir.instance.model.api.IBaseResource;
import org.hl7.fhir.r4.model.ValueSet;

/**
 * The documented exception to "unknown code systems are errors": code systems whose content is
 * licensed or too large to ship (LOINC, SNOMED CT, CPT, ICD) cannot be checked offline, so a code
 * from one of them is reported as a WARNING that says so, never silently accepted.
 *
 * <p>The same holds for membership in a value set: a code of an external system that the value
 * set lists (or whose whole system it includes) is in the value set, with the same warning that
 * the code itself was not checked; HAPI could not expand such a value set without the system's
 * content. A code the value set does not list is left to the rest of the chain (an error for a
 * required binding).
 *
 * <p>Every other code system the validator does not know (a typo in a system URL, a CodeSystem
 * the IG does not publish) stays an error. The list is the IG's "not checkable offline" list;
 * see docs/ig/index.md.
 */
public class OfflineTerminologyWarnings extends BaseValidationSupport {

	public static final Set<String> EXTERNAL_SYSTEMS = Set.of(
			"http://loinc.org",
			"http://snomed.info/sct",
			"http://www.ama-assn.org/go/cpt",
			"http://hl7.org/fhir/sid/icd-10-ca",
			"http://hl7.org/fhir/sid/icd-10-cm",
			"http://hl7.org/fhir/sid/icd-9-cm");

	public OfflineTerminologyWarnings(FhirContext fhirContext) {
		super(fhirContext);
	}

	@Override
	public String getName() {
		return "ims-fhir offline terminology warnings";
	}

	@Override
	public boolean isCodeSystemSupported(ValidationSupportContext context, String system) {
		return EXTERNAL_SYSTEMS.contains(system);
	}

	@Override
	public CodeValidationResult validateCode(
			ValidationSupportContext context,
			ConceptValidationOptions options,
			String system,
			String code,
			String display,
			String valueSetUrl) {
		if (system == null || !EXTERNAL_SYSTEMS.contains(system)) {
			return null;
		}
		return new CodeValidationResult()
				.setCode(code)
				.setDisplay(display)
				.setSeverity(IssueSeverity.WARNING)
				.setMessage("Code " + system + "#" + code + " not checked: the content of " + system
						+ " is not available offline");
	}

	/** A value set that includes codes of an external system: this support answers for those codes. */
	@Override
	public boolean isValueSetSupported(ValidationSupportContext context, String valueSetUrl) {
		IBaseResource resource = context.getRootValidationSupport().fetchValueSet(valueSetUrl);
		return resource instanceof ValueSet vs
				&& vs.getCompose().getInclude().stream()
						.anyMatch(i -> i.getSystem() != null && EXTERNAL_SYSTEMS.contains(i.getSystem()));
	}

	@Override
	public CodeValidationResult validateCodeInValueSet(
			ValidationSupportContext context,
			ConceptValidationOptions options,
			String system,
			String code,
			String display,
			IBaseResource valueSet) {
		if (system == null || !EXTERNAL_SYSTEMS.contains(system) || !(valueSet instanceof ValueSet vs)) {
			return null;
		}
		for (ValueSet.ConceptSetComponent include : vs.getCompose().getInclude()) {
			if (!system.equals(include.getSystem()) || !include.getFilter().isEmpty()) {
				continue;
			}
			boolean listed = include.getConcept().isEmpty()
					|| include.getConcept().stream().anyMatch(c -> code.equals(c.getCode()));
			if (listed) {
				return validateCode(context, options, system, code, display, vs.getUrl());
			}
		}
		return null;
	}
}
