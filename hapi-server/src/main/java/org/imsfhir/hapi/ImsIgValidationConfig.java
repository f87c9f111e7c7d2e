package org.imsfhir.hapi;

import ca.uhn.fhir.context.FhirContext;
import ca.uhn.fhir.context.support.IValidationSupport;
import ca.uhn.fhir.interceptor.api.IInterceptorBroadcaster;
import ca.uhn.fhir.interceptor.executor.InterceptorService;
import ca.uhn.fhir.rest.server.interceptor.validation.ValidationMessageUnknownCodeSystemPostProcessingInterceptor;
import java.io.IOException;
import java.io.InputStream;
import java.nio.file.Files;
import java.nio.file.Path;
import org.hl7.fhir.common.hapi.validation.support.PrePopulatedValidationSupport;
import org.hl7.fhir.common.hapi.validation.support.UnknownCodeSystemWarningValidationSupport;
import org.hl7.fhir.common.hapi.validation.support.ValidationSupportChain;
import org.hl7.fhir.instance.model.api.IBaseResource;
import org.hl7.fhir.utilities.npm.NpmPackage;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;
import org.springframework.beans.factory.annotation.Value;
import org.springframework.context.annotation.Bean;
import org.springframework.context.annotation.Configuration;

/**
 * Strict validation against the IMS FHIR IG.
 *
 * <p>Terms: the <em>IG package</em> is the FHIR NPM package ims-fhir builds from its mapping
 * tables ({@code ims-fhir ig}); its path comes from the property {@code ims-fhir.ig-package}
 * (the Python fixture passes {@code --ims-fhir.ig-package=PATH}). Its profiles, extensions,
 * CodeSystems and ValueSets are added, in memory, to the validation chain every write goes
 * through, so a wipe of the database ({@code $expunge}) never loses them; HAPI's snapshot
 * generator in the chain turns the profiles' differentials into snapshots.
 *
 * <p>With no package given, the server validates against base R4 only. Either way code systems
 * the server does not know are errors, except the external ones listed in
 * {@link OfflineTerminologyWarnings} (warnings).
 */
@Configuration
public class ImsIgValidationConfig {

	private static final Logger LOG = LoggerFactory.getLogger(ImsIgValidationConfig.class);

	/**
	 * Validation hooks that make "unknown code system" messages errors: HAPI reports a code
	 * system it cannot find as a warning in most bindings; the IG wants a typo in a system URL
	 * or a CodeSystem the IG does not publish refused. (LOINC, SNOMED CT, CPT and ICD are not
	 * unknown: {@link OfflineTerminologyWarnings} answers for them.)
	 */
	public static IInterceptorBroadcaster unknownCodeSystemsAreErrors() {
		InterceptorService hooks = new InterceptorService("ims-fhir-validation");
		hooks.registerInterceptor(
				new ValidationMessageUnknownCodeSystemPostProcessingInterceptor(IValidationSupport.IssueSeverity.ERROR));
		return hooks;
	}

	/** Reads every resource of the {@code package/} folder of a FHIR NPM package (.tgz). */
	public static PrePopulatedValidationSupport load(FhirContext fhirContext, Path tgz) throws IOException {
		PrePopulatedValidationSupport support = new PrePopulatedValidationSupport(fhirContext);
		NpmPackage npm;
		try (InputStream in = Files.newInputStream(tgz)) {
			npm = NpmPackage.fromPackage(in);
		}
		NpmPackage.NpmPackageFolder folder = npm.getFolders().get("package");
		for (String name : folder.listFiles()) {
			if (!name.endsWith(".json") || name.equals("package.json") || name.startsWith(".")) {
				continue;
			}
			IBaseResource resource = fhirContext.newJsonParser().parseResource(new String(folder.fetchFile(name),
					java.nio.charset.StandardCharsets.UTF_8));
			support.addResource(resource);
		}
		return support;
	}

	/** Adds the IG and the offline-terminology warnings to the JPA validation chain. */
	@Bean
	public Object imsIgValidationSupport(
			FhirContext fhirContext,
			IValidationSupport validationSupportChain,
			@Value("${ims-fhir.ig-package:}") String igPackage) throws IOException {
		if (validationSupportChain instanceof ValidationSupportChain chain) {
			// first in the chain: the in-memory terminology service would answer "cannot expand" for a
			// value set that lists LOINC/SNOMED CT codes before this one is asked
			chain.addValidationSupport(0, new OfflineTerminologyWarnings(fhirContext));
			if (!igPackage.isBlank()) {
				chain.addValidationSupport(0, load(fhirContext, Path.of(igPackage)));
				LOG.info("Validating against the IG package {}", igPackage);
			}
			// last in the chain: a code system nobody above knows (not R4, not the IG, not UCUM and the
			// other systems HAPI implements, not an external one) is an error, never silently passed
			UnknownCodeSystemWarningValidationSupport unknown = new UnknownCodeSystemWarningValidationSupport(fhirContext);
			unknown.setNonExistentCodeSystemSeverity(IValidationSupport.IssueSeverity.ERROR);
			chain.addValidationSupport(unknown);
			chain.invalidateCaches();
		} else {
			throw new IllegalStateException("the validation support is not a chain: " + validationSupportChain);
		}
		return "ims-fhir IG validation";
	}
}
